"""Which request sets a trial's peak reserved memory: the caching allocator's own trace of recorded validation rows.

    PYTHONPATH=$PWD python bench/estimate_snapshot.py --out DIR        # GPU, about a minute (4 rows)

For each row label (default: the estimator's largest unexplained misses, docs/vram-estimate.md) the row's exact
config is read from bench/results/estimate_validation.json and run in a FRESH process as bench/estimate_probe.py runs
it (expandable segments, two optimizer steps of model.train.train_and_evaluate on synthetic tokens) with
`torch.cuda.memory._record_memory_history` on. Writes DIR/snapshot_<n>.pickle (open it at pytorch.org/memory_viz)
and DIR/estimate_snapshot.json: per row the peaks, and from the trace the moment the reserved bytes reached their
maximum: the request that mapped the last pages (size, Python frames), the bytes allocated then, and the largest
free holes inside the mapped memory at that moment with what last occupied each (size, frames).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = float(2**30)
DEFAULT_LABELS = ("fp32 ckpt ~6.5 GiB", "low-rank head ~6.5 GiB", "8gb preset ~6.5 GiB", "d1024 L24 V50257 ~7 GiB")
MAPS, UNMAPS = ("segment_alloc", "segment_map"), ("segment_free", "segment_unmap")


def _frames(entry: dict, n: int = 5) -> list[str]:
    """The innermost `n` Python frames of this repository's code (model/, kernels/, tuner/), else of anything."""
    fr = entry.get("frames") or []
    ours = [f for f in fr if any(p in f.get("filename", "") for p in ("/model/", "/kernels/", "/tuner/"))]
    return [f"{Path(f['filename']).name}:{f['line']} {f['name']}" for f in (ours or fr)[:n]]


def analyse(trace: list[dict]) -> dict:
    """The moment of maximum mapped bytes in one device's allocator trace, and the holes then."""
    mapped = alloc = 0
    best = (-1, -1)  # (mapped bytes, index)
    for i, e in enumerate(trace):
        a, size = e["action"], int(e.get("size", 0))
        if a in MAPS:
            mapped += size
        elif a in UNMAPS:
            mapped -= size
        if mapped > best[0]:
            best = (mapped, i)
    if best[0] <= 0:
        raise ValueError(f"no {MAPS} entries in the trace: nothing says when pages were mapped")
    peak_i = best[1]
    # the request the last pages were mapped for is the next alloc; the holes are read right after it
    nxt_i = next((j for j in range(peak_i, len(trace)) if trace[j]["action"] == "alloc"), peak_i)
    nxt = trace[nxt_i] if trace[nxt_i]["action"] == "alloc" else None
    live: dict[int, dict] = {}  # addr -> alloc entry
    last_owner: dict[int, dict] = {}  # addr -> the entry that last held it
    ranges: list[tuple[int, int]] = []  # mapped [start, end)
    for e in trace[: nxt_i + 1]:
        a, addr, size = e["action"], int(e.get("addr", 0)), int(e.get("size", 0))
        if a == "alloc":
            live[addr] = e
            alloc += size
        elif a == "free_completed" and addr in live:
            last_owner[addr] = live.pop(addr)
            alloc -= size
        elif a in MAPS:
            ranges.append((addr, addr + size))
        elif a in UNMAPS:
            ranges = [r for r in ranges if not (r[0] >= addr and r[1] <= addr + size)]
    used = sorted((addr, addr + int(e["size"])) for addr, e in live.items())
    holes = []
    for start, end in sorted(ranges):
        cur = start
        for u0, u1 in used:
            if u1 <= cur or u0 >= end:
                continue
            if u0 > cur:
                holes.append((cur, u0))
            cur = max(cur, u1)
        if cur < end:
            holes.append((cur, end))
    holes.sort(key=lambda h: h[1] - h[0], reverse=True)
    return {
        "mapped_peak_gib": best[0] / GIB,
        "allocated_then_gib": alloc / GIB,
        "trace_index": peak_i,
        "trace_entries": len(trace),
        "request_that_mapped": None if nxt is None else {"size_mib": int(nxt["size"]) / 2**20, "frames": _frames(nxt)},
        "largest_holes": [
            {
                "size_mib": (h1 - h0) / 2**20,
                "last_owner_size_mib": int(last_owner[h0]["size"]) / 2**20 if h0 in last_owner else None,
                "last_owner_frames": _frames(last_owner[h0]) if h0 in last_owner else [],
            }
            for h0, h1 in holes[:8]
        ],
    }


def run_one(label: str, out: Path, index: int) -> dict:
    import torch

    from model.config import Phase1Config
    from model.train import train_and_evaluate
    from tuner.vram.calibrate import synthetic_token_data

    rows = json.loads((ROOT / "bench" / "results" / "estimate_validation.json").read_text())["rows"]
    row = next(r for r in rows if r["label"] == label)
    cfg = Phase1Config.from_dict(row["config"])
    tokens = cfg.batch_size * cfg.n_seq
    data = synthetic_token_data(cfg.vocab_size, n_tokens=max(4 * tokens, 8 * (cfg.n_seq + 1)) + 1, seed=1)
    torch.empty(1, device="cuda")
    torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")
    res = train_and_evaluate(cfg, data, train_tokens=2 * tokens, eval_tokens=cfg.n_seq, device="cuda")
    torch.cuda.synchronize()
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    pkl = out / f"snapshot_{index}.pickle"
    pkl.write_bytes(pickle.dumps(snap))
    result = {
        "label": label,
        "snapshot": pkl.name,
        "torch_peak_gib": res.peak_torch_gib,
        "reserved_peak_gib": torch.cuda.max_memory_reserved() / GIB,
        "recorded_row": {k: row.get(k) for k in ("measured_gib", "torch_peak_gib", "reserved_peak_gib")},
    }
    try:
        result["peak"] = analyse(snap["device_traces"][torch.cuda.current_device()])
    except Exception as exc:  # noqa: BLE001 - the pickle is kept; the analysis failure is reported, never hidden
        result["analysis_error"] = f"{type(exc).__name__}: {exc}"
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--labels", nargs="*", default=list(DEFAULT_LABELS), help="row labels of estimate_validation.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child: run this label, print its JSON line
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.one:
        print(json.dumps(run_one(args.one, args.out, args.index)))
        return 0
    t0, results = time.perf_counter(), []
    for i, label in enumerate(args.labels):
        p = subprocess.run(
            [sys.executable, __file__, "--out", str(args.out), "--one", label, "--index", str(i)],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=ROOT,
        )
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        r = json.loads(lines[-1]) if p.returncode == 0 and lines else {"label": label, "error": p.stderr[-1500:]}
        results.append(r)
        print(json.dumps(r, indent=1), flush=True)
    (args.out / "estimate_snapshot.json").write_text(
        json.dumps(
            {
                "command": "python bench/estimate_snapshot.py --out DIR",
                "rows": results,
                "wall_s": time.perf_counter() - t0,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
