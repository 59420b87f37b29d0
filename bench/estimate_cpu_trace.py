"""A real training step's allocations, recorded on CPU and replayed on one best-fit expandable segment (no GPU).

    PYTHONPATH=$PWD python bench/estimate_cpu_trace.py --config-json '{"batch_size": 1, "n_seq": 2048}'

Runs model.train.train_and_evaluate (two optimizer steps and the evaluation, one thread, the torch scan) inside the
PyTorch profiler with memory profiling, takes every allocation and free of the CPU allocator in time order, drops
the requests of 1 MiB or less (the CUDA caching allocator's small pool), rounds the rest to 512 bytes and replays
them with tuner.vram.estimate.allocator._segment_gap, the best-fit segment model the estimator's CE replay uses.
Prints (and with --json writes) the replayed gap (segment high-water - live high-water) in units of F and the
estimator's replay kappa of the same config, so the CE-only replay can be compared with the whole step's.
Only as good as the CPU op sequence is like the CUDA one: a lead for the GPU snapshot (bench/estimate_snapshot.py),
not a measurement of the GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tuner.vram.estimate.allocator import MIB, _segment_gap, block_round  # noqa: E402


def record(fields: dict, steps: int) -> tuple[dict, list[tuple[int, int]]]:
    """(config dict, [(ptr, +bytes | -bytes)] in time order) of `steps` CPU training steps of `fields`."""
    import torch
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    from model.config import Phase1Config
    from model.train import train_and_evaluate
    from tuner.vram.calibrate import synthetic_token_data

    torch.set_num_threads(1)
    cfg = Phase1Config.from_dict({"stability_monitoring_enabled": False, "ar_ssm_use_fused_scan": False, **fields})
    tokens = cfg.batch_size * cfg.n_seq
    data = synthetic_token_data(cfg.vocab_size, n_tokens=4 * tokens + cfg.n_seq + 2, seed=1)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_and_evaluate(cfg, data, train_tokens=steps * tokens, eval_tokens=cfg.n_seq, device="cpu")
    events: list[tuple[int, int, int]] = []

    def walk(ev) -> None:
        if ev.tag == _EventType.Allocation:
            events.append((ev.start_time_ns, int(ev.extra_fields.ptr), int(ev.extra_fields.alloc_size)))
        for ch in ev.children:
            walk(ch)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    events.sort()
    return cfg.to_dict(), [(p, s) for _, p, s in events]


def segment_events(trace: list[tuple[int, int]]) -> list[tuple[str, str, int]]:
    """The large-pool requests of an allocator trace as _segment_gap events (a freed pointer may be reused)."""
    names: dict[int, str] = {}
    out: list[tuple[str, str, int]] = []
    for i, (ptr, size) in enumerate(trace):
        if size < 0:
            name = names.pop(ptr, None)
            if name is not None:
                out.append(("free", name, 0))
        elif size > MIB:
            names[ptr] = f"t{i}"
            out.append(("alloc", f"t{i}", block_round(size)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config-json", required=True, help="Phase1Config fields as JSON")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from model.config import Phase1Config
    from tuner.vram.estimate.predict import estimate

    t0 = time.perf_counter()
    cfg_dict, trace = record(json.loads(args.config_json), args.steps)
    ev = segment_events(trace)
    sizes: dict[str, int] = {}
    live = peak = 0
    for kind, name, nbytes in ev:  # the live high-water mark, to state the gap against
        if kind == "alloc":
            sizes[name] = nbytes
        live += nbytes if kind == "alloc" else -sizes.pop(name)
        peak = max(peak, live)
    gap = _segment_gap(ev)
    e = estimate(Phase1Config.from_dict(cfg_dict), device="cuda")
    f = e.ce_chunk_gib * 2**30
    res = {
        "config": cfg_dict,
        "n_events": len(ev),
        "live_peak_mib": peak / MIB,
        "gap_mib": gap / MIB,
        "gap_over_f": gap / f,
        "replay_kappa": e.ce_replay_kappa,
        "ce_chunk_mib": f / MIB,
        "wall_s": time.perf_counter() - t0,
        "note": "CPU op sequence replayed on the CUDA allocator's best-fit model: a lead, not a GPU measurement",
    }
    print(json.dumps(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
