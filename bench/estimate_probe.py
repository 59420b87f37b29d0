"""Measure one configuration's real training peak memory in THIS (fresh) process and print one JSON line.

    python bench/estimate_probe.py --config-json '{"d_model": 1024, ...}' [--steps 3] [--device cuda|cpu]
    python bench/estimate_probe.py --calibrate --out FILE       # measure this GPU's calibration, save it to FILE

CUDA: sets PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before torch starts (what the worker does), runs
`model.train.train_and_evaluate` on synthetic uniform token ids for `steps` optimizer steps plus a one-batch
evaluation, and samples NVML's per-process used memory in a thread at 50 Hz. Reports the NVML peak, the allocator's
peak allocated/reserved and the outside part (NVML - reserved) at the end.
CPU: the same run inside the PyTorch profiler with memory profiling; the peak of the allocator's allocation events
(each request rounded up to 512 bytes, as the CUDA caching allocator would) is the measured tensor peak. It also
reports the train helper's TensorMemoryTracker figure (`peak_torch_gib`, cpu_tensor_bytes) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = float(2**30)


def _nvml_sampler(stop: threading.Event, out: dict, hz: float = 50.0) -> None:
    from tuner.vram.nvml import nvml_process_used_bytes

    peak, n, how = 0, 0, None
    while not stop.is_set():
        try:
            used, how = nvml_process_used_bytes()
        except Exception as exc:  # recorded, never a silent zero
            out["error"] = f"{type(exc).__name__}: {exc}"
            return
        if used is not None:
            peak = max(peak, used)
            n += 1
        stop.wait(1.0 / hz)
    out.update(peak=peak, n=n, how=how)


def measure_cuda(cfg_dict: dict, steps: int) -> dict:
    import pynvml
    import torch

    from model.config import Phase1Config
    from model.train import train_and_evaluate
    from tuner.vram.calibrate import synthetic_token_data

    cfg = Phase1Config.from_dict(cfg_dict)
    tokens = cfg.batch_size * cfg.n_seq
    data = synthetic_token_data(cfg.vocab_size, n_tokens=max(4 * tokens, 8 * (cfg.n_seq + 1)) + 1, seed=1)
    pynvml.nvmlInit()
    torch.empty(1, device="cuda")  # create the context first, so the sampler sees this process from the start
    stop, res = threading.Event(), {}
    th = threading.Thread(target=_nvml_sampler, args=(stop, res), daemon=True)
    th.start()
    t0 = time.perf_counter()
    error = None
    per_step: list[dict] = []

    def on_step(info) -> None:  # where the reserved high-water mark is set: which step, or the evaluation after
        per_step.append({"step": info.step, "max_allocated_gib": torch.cuda.max_memory_allocated() / GIB,
                         "max_reserved_gib": torch.cuda.max_memory_reserved() / GIB})

    try:
        result = train_and_evaluate(cfg, data, train_tokens=steps * tokens, eval_tokens=cfg.n_seq, device="cuda",
                                    on_step=on_step)
        torch_peak = result.peak_torch_gib
    except torch.cuda.OutOfMemoryError as exc:  # a config past the card: report what was seen
        error, torch_peak = f"OutOfMemoryError: {str(exc)[:200]}", torch.cuda.max_memory_allocated() / GIB
    torch.cuda.synchronize()
    time.sleep(0.1)  # one more sampler period after the last kernel
    stop.set()
    th.join()
    from tuner.vram.nvml import nvml_process_used_bytes

    used_end, _ = nvml_process_used_bytes()
    reserved_end = torch.cuda.memory_reserved()
    pynvml.nvmlShutdown()
    return {
        "measured_gib": res.get("peak", 0) / GIB, "nvml_samples": res.get("n", 0), "nvml_how": res.get("how"),
        "nvml_error": res.get("error"), "torch_peak_gib": torch_peak,
        "reserved_peak_gib": torch.cuda.max_memory_reserved() / GIB,
        "outside_end_gib": (used_end - reserved_end) / GIB if used_end else None, "per_step_peaks": per_step,
        "wall_s": time.perf_counter() - t0, "error": error,
    }


def measure_cpu(cfg_dict: dict, steps: int) -> dict:
    """Peak of the CPU allocator's events (512-byte rounded) over `steps` training steps and one eval batch."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    from model.config import Phase1Config
    from model.train import train_and_evaluate
    from tuner.vram.calibrate import synthetic_token_data

    cfg = Phase1Config.from_dict(cfg_dict)
    tokens = cfg.batch_size * cfg.n_seq
    data = synthetic_token_data(cfg.vocab_size, n_tokens=max(4 * tokens, 8 * (cfg.n_seq + 1)) + 1, seed=1)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = train_and_evaluate(cfg, data, train_tokens=steps * tokens, eval_tokens=cfg.n_seq, device="cpu")
    events: list[tuple[int, int]] = []

    def walk(ev) -> None:
        if ev.tag == _EventType.Allocation:
            events.append((ev.start_time_ns, int(ev.extra_fields.alloc_size)))
        for ch in ev.children:
            walk(ch)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    events.sort()
    cur = peak = cur_r = peak_r = 0
    for _, b in events:
        cur += b
        rb = (-(-abs(b) // 512) * 512) * (1 if b > 0 else -1)
        cur_r += rb
        peak, peak_r = max(peak, cur), max(peak_r, cur_r)
    return {"alloc_peak_gib": peak / GIB, "alloc_peak_rounded_gib": peak_r / GIB,
            "tracker_peak_gib": result.peak_torch_gib, "n_alloc_events": len(events),
            "wall_s": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config-json", help="Phase1Config fields as JSON")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--calibrate", action="store_true", help="measure this GPU's calibration")
    ap.add_argument("--out", type=Path, help="with --calibrate: calibration JSON file to write")
    args = ap.parse_args()
    if args.calibrate:
        from tuner.vram.calibrate import calibrate_device
        from tuner.vram.calibration import save_calibration

        cal = calibrate_device()
        if args.out:
            save_calibration(cal, args.out)
        print(json.dumps(cal.to_dict()))
        return 0
    cfg = json.loads(args.config_json)
    row = measure_cuda(cfg, args.steps) if args.device == "cuda" else measure_cpu(cfg, args.steps)
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
