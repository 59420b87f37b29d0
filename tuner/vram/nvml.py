"""NVML, read without torch: is there a GPU, how many, which one (its calibration key), and how much memory one
process uses on it.

A machine without NVML (no driver, no GPU, no library) raises anything from pynvml's NVMLError to ImportError or
OSError at its first call: each of those means "no NVML here", hence the broad excepts."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from tuner.units import GIB
from tuner.vram.calibration import device_key


class NvmlUnavailable(RuntimeError):
    """NVML cannot be initialised here (no NVIDIA driver / GPU)."""


def nvml_available() -> bool:
    """True when NVML initialises (an NVIDIA driver is present). Shuts NVML down again."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no NVML here (see the module docstring)
        return False
    try:
        pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML here (see the module docstring)
        pass
    return True


def nvml_device_count() -> int:
    """Number of NVIDIA GPUs NVML sees; raises NvmlUnavailable without a driver."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise NvmlUnavailable(f"NVML could not start ({e}): no NVIDIA GPU or driver on this machine") from e
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def process_used_gib(handle: Any, pid: int) -> float | None:
    """GPU memory (GiB) that process `pid` uses on the NVML device `handle`; None when NVML does not list it.

    NVML lists host PIDs; inside a container without the host PID namespace our PID is never listed, and the
    caller must say so rather than report 0.
    """
    used = _pid_bytes(compute_processes(handle), pid)
    return None if used is None else used / GIB


def compute_processes(handle: Any) -> list[Any]:
    """Compute processes on `handle`, MPS clients included: under MPS, nvmlDeviceGetComputeRunningProcesses lists the
    MPS server and the clients (packed workers' trial children) are listed by the MPS query instead. Caller must
    have called nvmlInit()."""
    import pynvml

    procs = list(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
    query = getattr(pynvml, "nvmlDeviceGetMPSComputeRunningProcesses", None)
    if query is not None:
        try:
            clients = list(query(handle))
        except pynvml.NVMLError:  # not supported by this driver / no MPS: the plain list is all there is
            clients = []
        listed = {p.pid for p in procs}  # a pid in both lists is counted once (its entries are summed per list)
        procs += [p for p in clients if p.pid not in listed]
    return procs


def _pid_bytes(procs: Any, pid: int) -> int | None:
    """Bytes NVML charges to `pid` among `procs` (summed over its entries); None when it is not listed."""
    used = None
    for proc in procs:
        mem = proc.usedGpuMemory
        if proc.pid == pid and mem is not None:  # None: NVML_VALUE_NOT_AVAILABLE (e.g. MIG without permission)
            used = (used or 0) + int(mem)
    return used


def current_device_key(index: int = 0) -> str | None:
    """(device name, driver, torch version) of GPU `index` via NVML, without importing torch; None without a GPU."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver / no GPU: this machine has nothing to calibrate
        return None
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(h)
        driver = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # noqa: BLE001 - no NVML here (see the module docstring)
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    name = name.decode() if isinstance(name, bytes) else str(name)
    driver = driver.decode() if isinstance(driver, bytes) else str(driver)
    try:
        tv = version("torch")
    except PackageNotFoundError:
        tv = "none"
    return device_key(name, driver, tv)


# --- measuring a device ------------------------------------------------------------------------------------


def nvml_process_used_bytes(pid: int | None = None, index: int = 0) -> tuple[int | None, str]:
    """NVML memory of process `pid` on GPU `index`: (bytes, how). Falls back to the only process listed (containers
    may show host PIDs); returns (None, reason) when it cannot tell. Caller must have called nvmlInit()."""
    import pynvml

    pid = os.getpid() if pid is None else pid
    h = pynvml.nvmlDeviceGetHandleByIndex(index)
    procs = compute_processes(h)
    used = _pid_bytes(procs, pid)
    if used is not None:
        return used, "nvml_process"
    if len(procs) == 1 and procs[0].usedGpuMemory is not None:
        return int(procs[0].usedGpuMemory), "nvml_only_process"
    return None, f"pid {pid} not among {len(procs)} NVML processes"


def nvml_memory_gib(index: int) -> tuple[float, float]:
    """(total, free) memory of GPU `index` in GiB, as NVML counts it now (free: what no process holds, whatever
    its owner). Raises NvmlUnavailable without a driver, IndexError for an index NVML does not have."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise NvmlUnavailable(f"NVML could not start ({e}): no NVIDIA GPU or driver on this machine") from e
    try:
        count = int(pynvml.nvmlDeviceGetCount())
        if not 0 <= index < count:
            raise IndexError(f"GPU {index}: NVML sees {count} GPU(s) (indices 0..{count - 1})")
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
        return int(info.total) / GIB, int(info.free) / GIB
    finally:
        pynvml.nvmlShutdown()
