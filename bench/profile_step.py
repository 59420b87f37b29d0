"""torch.profiler summary of the trainer's own training steps: top ops by device (CUDA) time and by CPU time, kernel
launches per step, and the GPU's idle share of the profiled steps.

Used by bench/throughput.py, which profiles the last PROFILE_STEPS steps of each timing run (its rows and this
summary come from the same process and the same steps loop) and writes DIR/profile_step.json
{"device", "torch", "data", "profiles": [{"model", "variant", "summary": {...}}]} beside throughput.json.

Summary fields (per profiled step unless named otherwise):
    steps: steps profiled; wall_ms: wall-clock ms per step over the profiled window (host clock, taken where the
    trainer has already synchronised on the loss); device_busy_ms: sum of device activity (kernels, memcpy, memset);
    gpu_idle_fraction: 1 - device_busy_ms / wall_ms (streams barely overlap in this step, so the sum is the busy
    time); device_events: kernels + memcpy + memset launched; cuda_launch_calls: cudaLaunchKernel-type host calls;
    top_device / top_cpu: the TOP ops (name, calls, self ms) by self device time and by self CPU time.
On a CPU run (--tiny) the device fields are None and only the CPU table is filled.
"""

from __future__ import annotations

import time
from typing import Any

PROFILE_STEPS = 3  # profiled steps at the end of a run (after one warm-up step of the profiler)
TOP = 15
# cudaGraphLaunch: a CUDA-graph replay, one call for the whole step's forward and backward (model/graph_step.py)
_LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaMemcpyAsync",
                 "cudaMemsetAsync", "cudaGraphLaunch")  # fmt: skip


class StepProfiler:
    """Profiles the last `active` of `total_steps` trainer steps: pass `on_step` to train_and_evaluate (it calls
    prof.step() after each step), then read `summary()`. Steps before the window run unprofiled."""

    def __init__(self, total_steps: int, cuda: bool, active: int = PROFILE_STEPS):
        from torch.profiler import ProfilerActivity, profile, schedule

        self.active = min(active, max(1, total_steps - 2))
        wait = max(0, total_steps - self.active - 1)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        self.cuda = cuda
        self.prof = profile(activities=acts, schedule=schedule(wait=wait, warmup=1, active=self.active, repeat=1))
        self.stamps: dict[int, float] = {}

    def __enter__(self) -> StepProfiler:
        self.prof.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.prof.__exit__(*exc)

    def on_step(self, info: Any) -> None:
        """The trainer's on_step callback: stamps the step's end on the host clock (the trainer has read the
        loss by then, i.e. the device finished the step) and advances the profiler's schedule."""
        self.stamps[info.step] = time.perf_counter()
        self.prof.step()

    def window_s(self) -> float:
        """Wall seconds of the profiled steps: from the end of the step before the window to the end of its last."""
        ends = sorted(self.stamps)
        last = ends[-1]
        first = last - self.active
        return self.stamps[last] - self.stamps[first] if first in self.stamps else float("nan")

    def summary(self) -> dict[str, Any]:
        return summarize(self.prof, self.active, self.window_s() * 1e3, self.cuda)


def summarize(prof: Any, steps: int, wall_ms: float, cuda: bool) -> dict[str, Any]:
    """The compact table of a finished profile of `steps` steps lasting `wall_ms` in all (see the module doc)."""
    avgs = prof.key_averages()

    def dev_us(e: Any) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

    def row(e: Any, us: float) -> dict[str, Any]:
        return {"name": e.key[:100], "calls": e.count / steps, "self_ms": us / 1e3 / steps}

    # ProfilerStep* is the profiler's own per-step range: on the device it spans the whole step, so counting it
    # would double the busy time (the first H100 run's summaries had to be corrected for it).
    events = [e for e in avgs if not e.key.startswith("ProfilerStep")]
    device = [e for e in events if getattr(e.device_type, "name", "") == "CUDA"] if cuda else []
    cpu_ops = [e for e in events if getattr(e.device_type, "name", "") == "CPU"]
    busy_ms = sum(dev_us(e) for e in device) / 1e3 / steps if cuda else None
    per_step_ms = wall_ms / steps
    return {
        "steps": steps,
        "wall_ms": per_step_ms,
        "device_busy_ms": busy_ms,
        "gpu_idle_fraction": (1.0 - busy_ms / per_step_ms) if busy_ms is not None and per_step_ms > 0 else None,
        "device_events": sum(e.count for e in device) / steps if cuda else None,
        "cuda_launch_calls": sum(e.count for e in cpu_ops if e.key in _LAUNCH_CALLS) / steps if cuda else None,
        "cpu_ops": sum(e.count for e in cpu_ops if e.key.startswith("aten::")) / steps,
        "top_device": [row(e, dev_us(e)) for e in sorted(device, key=dev_us, reverse=True)[:TOP]],
        "top_cpu": [row(e, e.self_cpu_time_total) for e in sorted(cpu_ops, key=lambda e: e.self_cpu_time_total,
                                                                   reverse=True)[:TOP]],
    }  # fmt: skip
