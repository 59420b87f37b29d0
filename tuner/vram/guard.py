"""The in-run half of the VRAM ceiling: an allocator cap plus an NVML sampler watching this process's own memory.

The estimator (tuner/vram/estimate/) is the first half: it refuses configs predicted over the ceiling before any GPU
time. This module is the second: while a trial trains, PyTorch's caching allocator is capped at the ceiling (so it
fails fast with an OOM instead of overshooting), and a thread reads this process's used GPU memory through NVML
(by PID, nvmlDeviceGetComputeRunningProcesses) at least 10 times a second, keeping the peak. Crossing the ceiling
sets a flag; `check()`, called from the training step callback, then raises `VramCeilingExceeded`, so the trial
stops at the next optimizer step. Without a GPU there is no NVML here (never faked): the memory objective then is
the trainer's CPU tensor-bytes peak, labelled `cpu_tensor_bytes`.

All memory figures are GiB (2^30 bytes).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from tuner.units import GIB
from tuner.vram.nvml import NvmlUnavailable, process_used_gib

# NVML refreshes its per-process accounting roughly every 1/10 s or faster; sampling at 20 Hz keeps the
# detection delay (one interval) well under the 1 s the service promises.
DEFAULT_INTERVAL_S = 0.05


class VramCeilingExceeded(RuntimeError):
    """This process's GPU memory crossed the trial's ceiling. `peak_gib` is the observed peak (GiB)."""

    def __init__(self, peak_gib: float, ceiling_gib: float):
        super().__init__(f"GPU memory {peak_gib:.3f} GiB crossed the ceiling of {ceiling_gib:.3f} GiB")
        self.peak_gib = float(peak_gib)
        self.ceiling_gib = float(ceiling_gib)


def allocator_fraction(ceiling_gib: float, total_gib: float) -> float:
    """Fraction of the device's memory to give `torch.cuda.set_per_process_memory_fraction` for a ceiling.

    Capped at 1.0: a ceiling above the card's size leaves the allocator uncapped (the card is then the limit).
    """
    if not ceiling_gib > 0:
        raise ValueError(f"ceiling_gib: {ceiling_gib!r} must be > 0")
    if not total_gib > 0:
        raise ValueError(f"total_gib: {total_gib!r} must be > 0")
    return min(1.0, ceiling_gib / total_gib)


class VramGuard:
    """Watch one process's GPU memory against a ceiling; stop the trial at the next step once it crosses.

    Usage (inside the process that holds the GPU)::

        with VramGuard(ceiling_gib=8.0, device_index=0) as guard:
            train(..., on_step=lambda info: guard.check())
        guard.peak_gib, guard.crossed, guard.crossed_peak_gib

    Args:
        ceiling_gib: the trial's ceiling, GiB.
        device_index: the NVML index of the physical GPU (NVML ignores CUDA_VISIBLE_DEVICES).
        device_uuid: the GPU's UUID as torch reports it (`torch.cuda.get_device_properties(i).uuid`); when given,
            NVML finds the device by UUID, which is right whatever CUDA_VISIBLE_DEVICES remapped; `device_index` is
            used only if that lookup fails (`nvml_lookup` says which one was used).
        pid: the process to watch; defaults to this one.
        interval_s: sampling period, s; at most 0.1 (>= 10 samples/s).
        torch_device: the torch CUDA device whose allocator is capped (0 when CUDA_VISIBLE_DEVICES pins one GPU);
            None leaves the allocator alone.
        sampler: a function returning the current used GiB (or None when unseen); injected by tests. When given,
            NVML is not touched.
        on_cross: called once, from the sampler thread, with (peak_gib, monotonic time) when the ceiling is crossed
            (the trial runner uses it to tell its parent at once).
    """

    def __init__(
        self,
        ceiling_gib: float,
        device_index: int = 0,
        pid: int | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        *,
        torch_device: int | None = None,
        device_uuid: str | None = None,
        sampler: Callable[[], float | None] | None = None,
        on_cross: Callable[[float, float], None] | None = None,
    ):
        if not ceiling_gib > 0:
            raise ValueError(f"ceiling_gib: {ceiling_gib!r} must be > 0")
        if not 0 < interval_s <= 0.1:
            raise ValueError(f"interval_s: {interval_s!r} must be in (0, 0.1] (at least 10 samples per second)")
        self.ceiling_gib = float(ceiling_gib)
        self.device_index = int(device_index)
        self.pid = os.getpid() if pid is None else int(pid)
        self.interval_s = float(interval_s)
        self.torch_device = torch_device
        self.device_uuid = device_uuid
        self.nvml_lookup: str | None = None  # "uuid" | "index" once NVML started
        self._sampler = sampler
        self._on_cross = on_cross
        self._nvml_started = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.peak_gib = 0.0
        self.n_samples = 0
        self.n_seen = 0  # samples in which NVML listed our PID
        self.crossed = False
        self.crossed_at: float | None = None  # time.monotonic() of the first sample over the ceiling
        self.crossed_peak_gib: float | None = None
        self.allocator_fraction: float | None = None
        self.sampler_error: str | None = None

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> VramGuard:
        if self._sampler is None:
            self._start_nvml()
        if self.torch_device is not None:
            self._cap_allocator()
        self._thread = threading.Thread(target=self._run, name="vram-guard", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the sampler thread and release NVML (always, even if the thread failed)."""
        try:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=2.0)
        finally:
            if self._nvml_started:
                import pynvml

                self._nvml_started = False
                try:
                    pynvml.nvmlShutdown()
                except Exception:  # noqa: BLE001 - shutting NVML down on the way out; nothing to keep
                    pass

    def __enter__(self) -> VramGuard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the step-side check ------------------------------------------------------------------------
    def check(self) -> None:
        """Raise VramCeilingExceeded if the sampler has seen this process over the ceiling.

        A sampler that failed is an error too: a trial must not run on unwatched memory.
        """
        if self.sampler_error is not None and not self.crossed:
            raise RuntimeError(f"the VRAM sampler stopped: {self.sampler_error}")
        if self.crossed:
            raise VramCeilingExceeded(self.crossed_peak_gib or self.peak_gib, self.ceiling_gib)

    def sample_once(self) -> float | None:
        """Take one sample now (also what the thread does each interval). Returns the used GiB or None."""
        if self._sampler is None:
            raise RuntimeError("VramGuard.sample_once: start() the guard first (no sampler yet)")
        used = self._sampler()
        with self._lock:
            self.n_samples += 1
            if used is None:
                return None
            self.n_seen += 1
            if used > self.peak_gib:
                self.peak_gib = used
            newly = used > self.ceiling_gib and not self.crossed
            if newly:
                self.crossed = True
                self.crossed_at = time.monotonic()
                self.crossed_peak_gib = used
            elif self.crossed and used > (self.crossed_peak_gib or 0.0):
                self.crossed_peak_gib = used
        if newly and self._on_cross is not None:
            self._on_cross(used, self.crossed_at or time.monotonic())
        return used

    # --- internals ------------------------------------------------------------------------------------
    def _start_nvml(self) -> None:
        import pynvml

        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise NvmlUnavailable(f"NVML could not start ({e}): no NVIDIA GPU or driver on this machine") from e
        self._nvml_started = True
        handle = None
        if self.device_uuid:
            uuid = self.device_uuid if self.device_uuid.startswith(("GPU-", "MIG-")) else f"GPU-{self.device_uuid}"
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
                self.nvml_lookup = "uuid"
            except pynvml.NVMLError:
                handle = None
        if handle is None:
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
                self.nvml_lookup = "index"
            except pynvml.NVMLError:
                self.stop()
                raise
        pid = self.pid
        self._sampler = lambda: process_used_gib(handle, pid)

    def _cap_allocator(self) -> None:
        import torch

        total_gib = torch.cuda.get_device_properties(self.torch_device).total_memory / GIB
        self.allocator_fraction = allocator_fraction(self.ceiling_gib, total_gib)
        torch.cuda.set_per_process_memory_fraction(self.allocator_fraction, self.torch_device)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception as e:  # noqa: BLE001 - a sampler failure is recorded and stops sampling: never a silent zero
                self.sampler_error = f"{type(e).__name__}: {e}"
                return
            self._stop.wait(self.interval_s)
