"""tuner.vram.nvml without a GPU: a machine without NVML says so (False, None, or one NvmlUnavailable line), and the
per-process lookup reads NVML's process list right. The lookups are fed a stand-in of pynvml's answers (the shapes
pynvml returns); on a GPU machine tests/tuner/vram/test_guard.py reads the real one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tuner.units import GIB
from tuner.vram.nvml import (
    NvmlUnavailable,
    _pid_bytes,
    current_device_key,
    nvml_available,
    nvml_device_count,
    nvml_process_used_bytes,
    process_used_gib,
)

pynvml = pytest.importorskip("pynvml")
HAS_NVML = nvml_available()


def _proc(pid, used):
    return SimpleNamespace(pid=pid, usedGpuMemory=used)


@pytest.mark.skipif(HAS_NVML, reason="NVML works on this machine: the no-GPU path cannot be shown here")
def test_without_nvml_every_entry_point_says_so():
    assert nvml_available() is False
    assert current_device_key() is None
    with pytest.raises(NvmlUnavailable, match="no NVIDIA GPU or driver on this machine") as info:
        nvml_device_count()
    assert "\n" not in str(info.value)


def test_pid_bytes_sums_the_pids_entries_and_skips_unknown_values():
    procs = [_proc(10, 3 * GIB), _proc(11, 5), _proc(10, GIB), _proc(10, None)]  # None: NVML_VALUE_NOT_AVAILABLE
    assert _pid_bytes(procs, 10) == 4 * GIB
    assert _pid_bytes(procs, 12) is None  # not listed: unknown, never 0
    assert _pid_bytes([_proc(10, None)], 10) is None


@pytest.fixture
def listed(monkeypatch):
    """NVML's process list of device 0 set by the test (pynvml's own functions replaced, nothing else)."""
    procs: list = []
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: f"handle{i}")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", lambda h: list(procs))
    return procs


def test_process_used_gib(listed):
    listed += [_proc(7, 2 * GIB), _proc(8, GIB)]
    assert process_used_gib("handle0", 7) == 2.0
    assert process_used_gib("handle0", 9) is None


def test_process_used_bytes_falls_back_to_the_only_process(listed):
    listed.append(_proc(4242, 123))  # a host PID, as NVML lists it from inside a container
    assert nvml_process_used_bytes(pid=7) == (123, "nvml_only_process")
    listed.append(_proc(4343, 5))
    assert nvml_process_used_bytes(pid=7) == (None, "pid 7 not among 2 NVML processes")
    assert nvml_process_used_bytes(pid=4343) == (5, "nvml_process")


def test_current_device_key_decodes_names(monkeypatch):
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: i)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda h: b"NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(pynvml, "nvmlSystemGetDriverVersion", lambda: "550.54")
    key = current_device_key()
    assert key is not None and key.startswith("NVIDIA H100 80GB HBM3|550.54|")

    def broken(h):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", broken)
    assert current_device_key() is None  # a GPU that fails mid-query: no key, no traceback
