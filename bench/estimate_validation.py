"""Validate tuner.vram.estimate on the GPU: predicted vs measured NVML peak of >= 30 training configurations.

    python bench/estimate_validation.py --out DIR            # GPU: writes DIR/estimate_validation.json
    python bench/estimate_validation.py --out DIR --dry-run  # anywhere: prints the configurations and predictions

1. Calibrates the device in a fresh process (bench/estimate_probe.py --calibrate): bare context, outside part after
   real training kernels ran, allocator-visible library workspaces; saves it to DIR/calibration.json (the one used).
2. For each configuration (d_model 1024, 12 layers, vocab 50257; ranks, HTT, FFN rank, checkpointing flags, dtype,
   batch and sequence length varied so predictions fall on both sides of 8 GiB), predicts with that calibration,
   then runs bench/estimate_probe.py in a FRESH process: expandable segments, model.train.train_and_evaluate for
   a few optimizer steps on synthetic tokens, NVML per-process peak sampled at 50 Hz.
3. Writes rows {config, batch_size, predicted_gib, measured_gib, torch_peak_gib, predicted tensor/allocator/outside
   parts, the allocator model's inputs (CE chunk F, tensor at the CE backward, kappa and its source),
   reserved_peak_gib, the measured allocator gap and the kappa it implies, error_pct} and a summary (median / p90 /
   max absolute error in % of the measured peak, false_fit_under_8gib: predicted <= 8 GiB but measured > 8 GiB).
   Predictions use the fresh calibration unrefined (its probes' kappa offsets, no row: bench/estimate_offline.py's
   "shipped" protocol); then estimate_offline.py re-scores the rows under that protocol (preset-family and broad
   rows apart), without the probes' offsets, leave-one-family-out and online refinement (DIR/estimate_offline.json).
Targets: median <= 1.5 %, p90 <= 3 %, mean signed within +-1 %, false_fit_under_8gib == 0. Budget: about 6 minutes
on one H100 (52 configurations, 2 probes at a time) after the calibration, whose six kappa probes are trials of the
12-layer default config (not yet timed; its own limit is 360 s, and --budget-s counts it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.config import Phase1Config  # noqa: E402
from tuner.vram.calibration import DeviceCalibration  # noqa: E402
from tuner.vram.estimate.predict import estimate  # noqa: E402

CEILING_GIB = 8.0
BASE = dict(vocab_size=50257, d_model=1024, n_layers=12, stability_monitoring_enabled=False)


def configurations() -> list[dict]:
    """>= 30 configurations over the guide's ranges; batch/n_seq chosen so they straddle 8 GiB."""
    variants = [
        # (label, fields)
        ("8gb preset", dict(ar_ssm_max_rank=16, htt_rank=12, ar_ssm_l1_regularization=0.01, checkpoint_ar_ssm=True)),
        ("10gb preset", dict(ar_ssm_max_rank=32, htt_rank=16, checkpoint_ar_ssm=True)),
        ("24gb preset", dict(ar_ssm_max_rank=64, ar_ssm_min_rank=8, htt_rank=32, use_gradient_checkpointing=False)),
        ("r64 ckpt", dict(ar_ssm_max_rank=64, ar_ssm_min_rank=8)),
        ("r16 no ckpt", dict(ar_ssm_max_rank=16, use_gradient_checkpointing=False)),
        ("ckpt ar_ssm only", dict(use_gradient_checkpointing=False, checkpoint_ar_ssm=True)),
        ("ckpt htt only", dict(use_gradient_checkpointing=False, checkpoint_htt=True)),
        ("htt 3 cores", dict(htt_num_cores=3, htt_rank=16)),
        ("htt r64 no phase", dict(htt_rank=64, htt_phase_encoding=False)),
        ("ffn 256", dict(ffn_rank=256)),
        ("ffn 8 gate 512", dict(ffn_rank=8, ar_ssm_gate_hidden_dim=512)),
        ("fp32 ckpt", dict(dtype="float32")),
        ("fp32 no ckpt", dict(dtype="float32", use_gradient_checkpointing=False)),
        ("torch scan", dict(ar_ssm_use_fused_scan=False)),
        ("low-rank head", dict(head="low_rank", head_rank=256)),
        ("unchunked loss", dict(loss_chunk_size=0, n_seq=1024)),
    ]
    out = []
    for i, (label, fields) in enumerate(variants):
        for j, target in enumerate((6.5, 9.5)):  # one below the ceiling, one above (by choosing B and n_seq)
            seqs = [2048, 1024, 512]
            k = (i + j) % 3
            cfg = _fit_batch({**BASE, **fields}, target, seqs[k:] + seqs[:k])
            out.append({"label": f"{label} ~{target:g} GiB", "config": cfg})
    return out


def broad_configurations() -> list[dict]:
    """Configurations outside the 1024/12/50257 family: other widths, depths, vocabularies, batches and sequence
    lengths (issue: estimates that hold on any shape), each sized to land near one of 4 / 7 / 10 GiB."""
    shapes = [
        ("d512 L8 V32000", dict(d_model=512, n_layers=8, vocab_size=32000)),
        ("d768 L12 V32000", dict(d_model=768, n_layers=12, vocab_size=32000)),
        ("d1536 L8 V50257", dict(d_model=1536, n_layers=8, vocab_size=50257)),
        ("d2048 L6 V50257", dict(d_model=2048, n_layers=6, vocab_size=50257)),
        ("d1024 L24 V50257", dict(d_model=1024, n_layers=24, vocab_size=50257)),
        ("d1024 L4 V100000", dict(d_model=1024, n_layers=4, vocab_size=100000)),
        ("d640 L16 V8192", dict(d_model=640, n_layers=16, vocab_size=8192)),
        ("d1280 L10 V128000", dict(d_model=1280, n_layers=10, vocab_size=128000)),
        ("d896 L20 V16384 no ckpt", dict(d_model=896, n_layers=20, vocab_size=16384, use_gradient_checkpointing=False)),
        ("d1536 L12 V32000 fp32", dict(d_model=1536, n_layers=12, vocab_size=32000, dtype="float32")),
    ]
    out = []
    for i, (label, fields) in enumerate(shapes):
        for j, target in enumerate((4.0, 7.0, 10.0)[i % 2: i % 2 + 2]):
            seqs = [4096, 2048, 1024, 512, 256]
            k = (i + j) % len(seqs)
            cfg = _fit_batch({**BASE, "ar_ssm_max_rank": 32, "htt_rank": 16, **fields, "stability_monitoring_enabled": False},
                             target, seqs[k:] + seqs[:k])
            out.append({"label": f"{label} ~{target:g} GiB", "config": cfg})
    return out


def _fit_batch(fields: dict, target_gib: float, seqs: list[int]) -> dict:
    """The batch size whose prediction is closest to target, at the first n_seq of `seqs` that gets within 15%."""
    best = None
    for n_seq in ([fields["n_seq"]] if "n_seq" in fields else seqs):
        if best is not None and best[0] < 0.15 * target_gib:
            break
        for b in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32):
            cfg = Phase1Config.from_dict({**fields, "n_seq": n_seq, "batch_size": b})
            t = estimate(cfg, device="cuda", calibration=_NOMINAL).total_gib
            if best is None or abs(t - target_gib) < best[0]:
                best = (abs(t - target_gib), cfg.to_dict())
    return best[1]


# Used only to choose batch sizes before the device is calibrated (not for the reported predictions).
_NOMINAL = DeviceCalibration(device="nominal", driver="-", torch="-", context_gib=0.6, outside_gib=0.75,
                             workspace_gib=0.0, source="batch-size selection only")


def _probe(args: list[str], timeout: float) -> dict:
    try:
        p = subprocess.run([sys.executable, str(ROOT / "bench" / "estimate_probe.py"), *args], capture_output=True,
                           text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"probe timed out after {timeout:g} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-800:]}"}
    return json.loads(lines[-1])


def summarise(rows: list[dict]) -> dict:
    errs = sorted(abs(r["error_pct"]) for r in rows if r.get("error_pct") is not None)
    if not errs:
        return {"n": 0}
    p90 = errs[min(len(errs) - 1, int(round(0.9 * (len(errs) - 1))))]
    return {
        "n": len(errs), "median_abs_error_pct": statistics.median(errs), "p90_abs_error_pct": p90,
        "max_abs_error_pct": errs[-1],
        "mean_signed_error_pct": statistics.fmean(r["error_pct"] for r in rows if r.get("error_pct") is not None),
        "false_fit_under_8gib": sum(1 for r in rows if r.get("measured_gib") is not None
                                    and r["predicted_gib"] <= CEILING_GIB < r["measured_gib"]),
        "n_under_8gib_measured": sum(1 for r in rows if r.get("measured_gib") and r["measured_gib"] <= CEILING_GIB),
        "n_over_8gib_measured": sum(1 for r in rows if r.get("measured_gib") and r["measured_gib"] > CEILING_GIB),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--dry-run", action="store_true", help="print configurations and predictions; run nothing")
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps per probe (>= 2: AdamW state present)")
    ap.add_argument("--limit", type=int, default=0, help="run only the first N configurations")
    ap.add_argument("--family", choices=("preset", "broad", "both"), default="preset",
                    help="preset: d_model 1024, 12 layers, V 50257 (the default); broad: other widths, depths, "
                         "vocabularies, batches and sequence lengths; both")
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting probes after this many seconds")
    ap.add_argument("--jobs", type=int, default=0,
                    help="probes run at once (0: 2 when NVML sees each process by PID, else 1); each probe is its "
                         "own process and NVML's figure is per process, so two at once do not mix")
    args = ap.parse_args()
    t0 = time.perf_counter()
    configs = {"preset": configurations, "broad": broad_configurations,
               "both": lambda: configurations() + broad_configurations()}[args.family]()
    if args.limit:
        configs = configs[: args.limit]
    if args.dry_run:
        for c in configs:
            e = estimate(Phase1Config.from_dict(c["config"]), device="cuda", calibration=_NOMINAL)
            print(f"{c['label']:<34} B={e.batch_size:<3} L={e.n_seq:<5} predicted {e.total_gib:7.3f} GiB "
                  f"(tensor {e.tensor_gib:.3f}, peak at {e.peak_moment}) [nominal outside 0.75 GiB]")
        print(f"{len(configs)} configurations (dry run: nothing measured)")
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    cal_file = args.out / "calibration.json"
    cal_row = _probe(["--calibrate", "--out", str(cal_file)], timeout=360)  # six 12-layer kappa probes
    if "error" in cal_row:
        print(f"error: calibration failed: {cal_row['error']}", file=sys.stderr)
        return 2
    cal = DeviceCalibration.from_dict(cal_row)
    print(f"calibrated {cal.key}: context {cal.context_gib:.3f} GiB, outside {cal.outside_gib:.3f} GiB, "
          f"workspace {cal.workspace_gib:.4f} GiB", flush=True)
    jobs = args.jobs or (2 if "(nvml_process)" in cal.source else 1)
    print(f"{len(configs)} configurations, {jobs} probe(s) at a time", flush=True)

    def run_one(i: int, c: dict) -> dict:
        cfg = Phase1Config.from_dict(c["config"])
        est = estimate(cfg, device="cuda", calibration=cal)
        if time.perf_counter() - t0 > args.budget_s:
            return {}
        m = _probe(["--config-json", json.dumps(c["config"]), "--steps", str(args.steps)], timeout=150)
        row = {"label": c["label"], "config": c["config"], "batch_size": cfg.batch_size, "n_seq": cfg.n_seq,
               "predicted_gib": est.total_gib, "predicted_tensor_gib": est.tensor_gib,
               "predicted_allocator_gib": est.allocator_gib, "predicted_outside_gib": est.outside_gib,
               "predicted_peak_moment": est.peak_moment, "predicted_ce_chunk_gib": est.ce_chunk_gib,
               "predicted_ce_backward_gib": est.ce_backward_gib, "predicted_kappa": est.ce_hole_kappa,
               "replay_kappa": est.ce_replay_kappa,
               "kappa_source": est.kappa_source, "allocator_class": est.allocator_class,
               "predicted_recompute_gib": est.recompute_gib, "predicted_recompute_hole_gib": est.recompute_hole_gib,
               "measured_gib": m.get("measured_gib"),
               "torch_peak_gib": m.get("torch_peak_gib"), "reserved_peak_gib": m.get("reserved_peak_gib"),
               "outside_end_gib": m.get("outside_end_gib"), "per_step_peaks": m.get("per_step_peaks"),
               "nvml_how": m.get("nvml_how"),
               "nvml_samples": m.get("nvml_samples"), "probe_wall_s": m.get("wall_s"),
               "error": m.get("error") or m.get("nvml_error")}
        if row["measured_gib"]:
            row["error_pct"] = 100.0 * (est.total_gib - row["measured_gib"]) / row["measured_gib"]
            row["tensor_error_pct"] = (100.0 * (est.tensor_gib - row["torch_peak_gib"]) / row["torch_peak_gib"]
                                       if row["torch_peak_gib"] else None)
            if row["torch_peak_gib"] and row["reserved_peak_gib"]:
                gap = row["reserved_peak_gib"] - row["torch_peak_gib"]
                row["allocator_gap_gib"] = gap
                row["allocator_error_gib"] = est.allocator_gib - gap
                row["observed_kappa"] = est.observed_kappa(row["torch_peak_gib"], gap)
        print(f"[{i + 1}/{len(configs)}] {c['label']:<30} predicted {est.total_gib:7.3f} measured "
              f"{row['measured_gib'] or float('nan'):7.3f} GiB (torch {row['torch_peak_gib'] or float('nan'):.3f} "
              f"vs {est.tensor_gib:.3f}) {row.get('error_pct', float('nan')):+.1f}% {row['error'] or ''}", flush=True)
        return row

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        rows = [r for r in pool.map(lambda ic: run_one(*ic), enumerate(configs)) if r]
    if len(rows) < len(configs):
        print(f"budget reached: {len(rows)} of {len(configs)} configurations measured", flush=True)
    import torch  # only for the version string of the report (the probes ran in their own processes)

    result = {"device": cal.device, "driver": cal.driver, "torch": torch.__version__, "calibration": cal.to_dict(),
              "command": f"python bench/estimate_validation.py --out DIR --family {args.family}",
              "family": args.family, "ceiling_gib": CEILING_GIB,
              "rows": rows, "summary": summarise(rows), "wall_s": time.perf_counter() - t0}
    out_file = args.out / "estimate_validation.json"
    out_file.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2))
    # The same rows under (a) no refinement, (b) leave-one-family-out kappa, (c) online refinement in row order.
    subprocess.run([sys.executable, str(ROOT / "bench" / "estimate_offline.py"), "--rows", str(out_file),
                    "--json", str(args.out / "estimate_offline.json")], cwd=ROOT, check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
