"""The two measurements of bench/claims.py that are not training runs, each one job of bench/lm_runs.py's pool
(same `--job JOB.json --result RESULT.json` protocol, one process per job so NVML's per-process figure is its own).

"inference" (job["mode"]): a freshly built model (Phase 1 or dense, from job["config"]) scores validation windows
under no_grad and autocast, as the validation pass does, at each batch size of job["batch_sizes"] in ascending
order (the caching allocator only grows, so the process's NVML figure after each stage is that stage's peak).
Reports per stage: NVML per-process GiB, torch's max allocated and reserved GiB; and the CUDA context alone (NVML
after one 1-element tensor, before the model exists). On CPU: the peak tensor bytes (model/memory.py), no NVML.

"scan" (job["mode"]): bench/kernel_bench.py's scan rows with its plain-torch cumsum reference (a = 1) for the
shapes of job["scan_shapes"], each checked against float64 first. Needs CUDA: on CPU it records why it did not run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's packages before bench/ siblings
sys.path.insert(1, str(Path(__file__).resolve().parent))

import lm_runs

SETTLE_S = 0.3  # after a stage: lets the NVML sampler thread see the allocator's final state before we read it


def run_inference(job: dict) -> dict:
    """The eval-only memory of one model at each batch size (see the module docstring)."""
    import torch

    from model.data import DataSource, prepare_data
    from model.evaluate import autocast_for, token_windows
    from model.memory import TensorMemoryTracker
    from model.units import GIB

    config = lm_runs.build_config(job)
    data = prepare_data(DataSource(**job["data"]), config.vocab_size, job["cache_dir"])
    on_gpu = torch.cuda.is_available()
    dev = torch.device("cuda" if on_gpu else "cpu")
    out: dict = {
        "id": job["id"],
        "model": job["model"],
        "config": config.to_dict(),
        "device": dev.type,
        "mode": "inference",
        "diverged": False,
        "stages": [],
    }
    guard = tracker = None
    if on_gpu:
        from tuner.vram.guard import VramGuard

        guard = VramGuard(
            lm_runs.NVML_WATCH_CEILING_GIB, device_uuid=str(torch.cuda.get_device_properties(0).uuid)
        ).start()
        torch.zeros(1, device=dev)
        torch.cuda.synchronize()
        out["context_gib"] = guard.sample_once()  # the CUDA context alone: no model, no kernels loaded yet
    else:
        tracker = TensorMemoryTracker("cpu").__enter__()
    try:
        model = _build(job, config).to(dev).eval()
        out["param_counts"] = dict(model.param_counts())
        L = config.n_seq
        for batch in sorted(job["batch_sizes"]):
            n_windows = min(batch * job["batches_per_stage"], (data.n_val_tokens - 1) // L)
            starts = torch.arange(n_windows).numpy() * L
            if on_gpu:
                torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            with torch.no_grad(), autocast_for(config, dev):
                for b0 in range(0, n_windows, batch):
                    win = token_windows(data.val, starts[b0 : b0 + batch], L + 1, dev)
                    model(win[:, :-1], win[:, 1:])
            stage = {"batch_size": batch, "windows": int(n_windows), "s": time.perf_counter() - t0}
            if on_gpu:
                torch.cuda.synchronize(dev)
                time.sleep(SETTLE_S)
                guard.sample_once()
                stage.update(
                    nvml_peak_gib=guard.peak_gib if guard.n_seen else None,
                    peak_torch_gib=torch.cuda.max_memory_allocated(dev) / GIB,
                    peak_reserved_gib=torch.cuda.max_memory_reserved(dev) / GIB,
                )
            else:
                stage.update(nvml_peak_gib=None, peak_torch_gib=tracker.peak_bytes / GIB, peak_reserved_gib=None)
            out["stages"].append(stage)
    finally:
        if guard is not None:
            guard.stop()
        if tracker is not None:
            tracker.__exit__(None, None, None)
    return out


def _build(job: dict, config):
    if job["model"] == "dense":
        from model.dense import build_dense_model

        return build_dense_model(config)
    from model.lm import build_model

    return build_model(config)


def run_scan(job: dict) -> dict:
    """kernel_bench's checked scan rows with the cumsum reference, for job["scan_shapes"] [[B, L, R], ...]."""
    import torch

    out: dict = {"id": job["id"], "model": "scan", "mode": "scan", "diverged": False}
    if not torch.cuda.is_available():
        out["skipped"] = "the fused scan is a CUDA kernel: not timed without a GPU"
        return out
    import kernel_bench as kb
    from triton.testing import do_bench

    from kernels import scan

    copy = kb.copy_gbps(do_bench)
    rows, ref_cache = [], {}
    for B, L, R in job["scan_shapes"]:
        for dname in job["dtypes"]:
            errs = kb.check(scan, "public", B, L, R, kb.DTYPES[dname], ref_cache)  # raises on a wrong kernel
            ref_cache.clear()
            row = kb.scan_row(do_bench, scan, "public", "public", B, L, R, dname, copy, errs, (100, 500), with_ref=True)
            rows.append(
                {
                    k: row[k]
                    for k in (
                        "B",
                        "L",
                        "R",
                        "dtype",
                        "fwd_ms",
                        "bwd_ms",
                        "ref_fwd_ms",
                        "ref_bwd_ms",
                        "speedup_fwd_bwd",
                        "rel_err",
                    )
                }
            )
    out.update(device=torch.cuda.get_device_name(), copy_gbps=copy, rows=rows)
    return out


def run_probe(job: dict) -> dict:
    return {"inference": run_inference, "scan": run_scan}[job["mode"]](job)


if __name__ == "__main__":
    sys.exit(lm_runs.child_main(None, run_probe, __doc__.splitlines()[0]))
