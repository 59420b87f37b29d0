"""What every bench script shares: the device header a result file starts with, wall-clock timing, writing the
JSON result (into bench/results/ by default), and the median of a possibly empty list.

Imported as `bench._common` after the script puts the repository root first on sys.path (scripts never import
from bench/ by bare name: bench/kernels.py would shadow the `kernels` package)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def device_name(index: int = 0) -> str:
    """The name of GPU `index` (torch's CUDA, else NVML), or the CPU's description when there is no GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(index))
    except ImportError:
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            return name.decode() if isinstance(name, bytes) else str(name)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML library, driver or GPU: this is a CPU machine
        return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def device_header() -> dict[str, str]:
    """{"device", "torch", "python"}: what a result was measured on (torch "none" when it is not installed)."""
    try:
        import torch

        torch_version = str(torch.__version__)
    except ImportError:
        torch_version = "none"
    return {"device": device_name(), "torch": torch_version, "python": platform.python_version()}


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """`with stopwatch() as t: ...` then `t["s"]`: the block's wall-clock seconds (time.perf_counter)."""
    t: dict[str, float] = {"s": 0.0}
    t0 = time.perf_counter()
    try:
        yield t
    finally:
        t["s"] = time.perf_counter() - t0


def write_json(path: Path, data: Any, *, indent: int = 2) -> Path:
    """Write `data` as JSON (folders created, values JSON lacks written with str()), atomically: a reader sees the
    old file or the new one, never half of one."""
    from tuner.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=indent, default=str) + "\n")
    return path


def median_or_none(xs: Sequence[float]) -> float | None:
    """statistics.median of `xs`; None when empty (a bench row with no trials to take it over)."""
    return float(statistics.median(xs)) if xs else None
