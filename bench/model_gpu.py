"""Forward and backward of the full-size Phase 1 model (12 layers, d_model 1024, seq 2048, vocab 50257) on a GPU.

Shows that the guide's target size runs, with the fused scan on and off and with checkpointing on and off, and
records step time, tokens/s and peak allocator memory of each variant side by side in one run.

    python bench/model_gpu.py --out DIR      # writes DIR/model_gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench._common import device_header, write_json  # noqa: E402
from model import Phase1Config, build_model  # noqa: E402

GIB = 2**30


def run_variant(base: Phase1Config, *, fused: bool, ckpt: bool, batch_size: int, steps: int) -> dict:
    cfg = base.replace(ar_ssm_use_fused_scan=fused, use_gradient_checkpointing=ckpt, checkpoint_ar_ssm=False,
                       batch_size=batch_size)
    torch.manual_seed(0)
    model = build_model(cfg).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    ids = torch.randint(0, cfg.vocab_size, (batch_size, cfg.n_seq + 1), device="cuda")
    x, y = ids[:, :-1], ids[:, 1:]
    torch.cuda.reset_peak_memory_stats()
    times = []
    losses = []
    for i in range(steps + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x, targets=y)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= 2:  # the first two steps compile kernels and warm the allocator
            times.append(time.perf_counter() - t0)
        losses.append(float(out.loss))
    step_s = statistics.median(times)
    row = {
        "fused_scan": fused, "gradient_checkpointing": ckpt, "batch_size": batch_size, "n_seq": cfg.n_seq,
        "step_ms_median": step_s * 1e3, "step_ms_min": min(times) * 1e3, "step_ms_max": max(times) * 1e3,
        "tokens_per_s": batch_size * cfg.n_seq / step_s,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB,
        "loss_first": losses[0], "loss_last": losses[-1], "finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses)),
        "params": sum(p.numel() for p in model.parameters()),
    }
    del model, opt, out
    torch.cuda.empty_cache()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device; this benchmark needs a GPU", file=sys.stderr)
        return 2
    base = Phase1Config(vocab_size=50257, d_model=1024, n_layers=12, n_seq=2048)
    rows = []
    for fused in (True, False):
        for ckpt in (True, False):
            rows.append(run_variant(base, fused=fused, ckpt=ckpt, batch_size=args.batch_size, steps=args.steps))
            print(json.dumps(rows[-1]), flush=True)
    result = {**device_header(), "config": base.to_dict(), "rows": rows}
    write_json(args.out / "model_gpu.json", result)
    print(f"{'fused':>6} {'ckpt':>5} {'ms/step':>9} {'tok/s':>9} {'peak GiB':>9}")
    for r in rows:
        print(f"{r['fused_scan']!s:>6} {r['gradient_checkpointing']!s:>5} {r['step_ms_median']:9.1f} "
              f"{r['tokens_per_s']:9.0f} {r['peak_allocated_gib']:9.2f}")
    return 0 if all(r["finite"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
