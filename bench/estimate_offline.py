"""Re-score recorded GPU validation rows with the CURRENT estimator, under four honest protocols (CPU, seconds).

    python bench/estimate_offline.py --rows bench/results/estimate_validation.json \
        --json bench/results/estimate_offline.json

For every recorded configuration the prediction is recomputed with today's tuner.vram.estimate and compared with the
measured NVML peak:
(shipped) the calibration exactly as the run recorded it (its kappa offsets are the calibration probes', measured by
    calibrate_device before any row; no row refines it): what a worker predicts for its first trial on that device.
    No coefficient of the estimator is fitted to these rows, so every row is held out; the figures are also given
    for the preset-family rows (d_model 1024, 12 layers, V 50257) and the broad rows (every other shape) apart.
Then, with the calibration's refinement lists emptied:
(a) none: no refinement; kappa (the allocator's CE-hole coefficient) from the best-fit segment replay;
(b) lofo: the per-dtype-class offset of kappa over the replay's (median of observed - replayed) fitted on every
    OTHER configuration family, the two rows of a family (same label but the ~size suffix) held out together;
(c) online: rows in recorded order; row i is predicted with a calibration refined by tuner.vram.calibration.refine only
    from rows 0..i-1, the way the worker refines after each finished trial (twice: with the reserved peak, as a
    worker that records torch.cuda.max_memory_reserved would pass it, and without it).
Each protocol prints median / p90 / max absolute error in % of the measured peak and false fits under 8 GiB.
When the recorded calibration's kappa probes are not today's (tuner.vram.calibrate.kappa_probe_configs) it says so:
"shipped" then scores the recorded probes, and only a fresh GPU calibration scores today's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.config import Phase1Config  # noqa: E402
from tuner.vram.calibrate import kappa_probe_configs  # noqa: E402
from tuner.vram.calibration import ALLOCATOR_CLASSES, DeviceCalibration, refine  # noqa: E402
from tuner.vram.estimate.predict import estimate  # noqa: E402

CEILING_GIB = 8.0


def family(label: str) -> str:
    return label.rsplit(" ~", 1)[0]


def in_family(cfg: dict) -> bool:
    """The preset family the estimator was first validated on (d_model 1024, 12 layers, V 50257)."""
    return (cfg["d_model"], cfg["n_layers"], cfg["vocab_size"]) == (1024, 12, 50257)


def stats(errs: list[float], rows: list[dict], preds: list[float]) -> dict:
    a = sorted(abs(e) for e in errs)
    p90 = a[min(len(a) - 1, int(round(0.9 * (len(a) - 1))))]
    false_fit = sum(1 for r, p in zip(rows, preds) if p <= CEILING_GIB < r["measured_gib"])
    return {"n": len(a), "median_abs_error_pct": statistics.median(a), "p90_abs_error_pct": p90,
            "max_abs_error_pct": a[-1], "mean_signed_error_pct": statistics.fmean(errs),
            "false_fit_under_8gib": false_fit}


def probe_shapes_match(recorded: dict) -> tuple[bool, list, list]:
    """Whether the recorded calibration's kappa probes are today's kappa_probe_configs() (class, batch, n_seq,
    layers): the "shipped" protocol scores the recorded probes' offsets, so a changed probe definition is only
    scored by a fresh GPU calibration."""
    rec = sorted((p["class"], p["batch_size"], p["n_seq"], p["n_layers"])
                 for p in recorded.get("extra", {}).get("kappa_probes", []))
    now = sorted(("fp32" if c.dtype == "float32" else "amp", c.batch_size, c.n_seq, c.n_layers)
                 for c in kappa_probe_configs())
    return rec == now, rec, now


def with_offsets(cal: DeviceCalibration, offsets: dict[str, list[float]]) -> DeviceCalibration:
    return dataclasses.replace(cal, kappa_offsets_amp=tuple(offsets.get("amp", ())),
                               kappa_offsets_fp32=tuple(offsets.get("fp32", ())))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=Path, default=ROOT / "bench" / "results" / "estimate_validation.json")
    ap.add_argument("--json", type=Path, default=None, help="also write the per-row figures and summaries here")
    ap.add_argument("--verbose", action="store_true", help="print every row")
    args = ap.parse_args()
    data = json.loads(args.rows.read_text())
    rows = [r for r in data["rows"] if r.get("measured_gib") and r.get("torch_peak_gib")]
    recorded = DeviceCalibration.from_dict(data["calibration"])
    cal0 = dataclasses.replace(recorded, tensor_ratios=(), outside_residuals_gib=(), kappa_offsets_amp=(),
                               kappa_offsets_fp32=())
    cfgs = [Phase1Config.from_dict(r["config"]) for r in rows]
    base = [estimate(c, device="cuda", calibration=cal0) for c in cfgs]
    has_reserved = all(r.get("reserved_peak_gib") for r in rows)
    # each row's observed kappa (needs its reserved peak: the allocator gap itself)
    obs = [e.observed_kappa(r["torch_peak_gib"], r["reserved_peak_gib"] - r["torch_peak_gib"]) if has_reserved
           else e.observed_kappa(r["torch_peak_gib"], r["measured_gib"] - cal0.outside_gib - r["torch_peak_gib"])
           for e, r in zip(base, rows)]

    out: dict = {"source": str(args.rows), "device": data.get("device"), "torch": data.get("torch"),
                 "command": "python bench/estimate_offline.py --rows " + str(args.rows)
                 + (f" --json {args.json}" if args.json else ""),
                 "note": "re-scored offline on CPU: today's estimator on the recorded configurations and measured "
                         "peaks; nothing re-measured", "n_rows": len(rows), "protocols": {}, "rows": []}

    def line(name: str, s: dict) -> None:
        print(f"{name:<26} n={s['n']:<3} median {s['median_abs_error_pct']:5.2f}%  p90 {s['p90_abs_error_pct']:5.2f}%  "
              f"max {s['max_abs_error_pct']:5.2f}%  mean signed {s['mean_signed_error_pct']:+5.2f}%  "
              f"false fits under {CEILING_GIB:g} GiB: {s['false_fit_under_8gib']}")

    def report(name: str, preds: list[float], subsets: bool = False) -> None:
        errs = [100.0 * (p - r["measured_gib"]) / r["measured_gib"] for p, r in zip(preds, rows)]
        s = stats(errs, rows, preds)
        out["protocols"][name] = s
        line(name, s)
        if subsets:
            for part, keep in (("family", True), ("broad", False)):
                idx = [i for i, r in enumerate(rows) if in_family(r["config"]) == keep]
                sub = stats([errs[i] for i in idx], [rows[i] for i in idx], [preds[i] for i in idx])
                out["protocols"][f"{name} [{part} rows]"] = sub
                line(f"  {part} rows", sub)
        for i, (p, e) in enumerate(zip(preds, errs)):
            if len(out["rows"]) <= i:
                out["rows"].append({"label": rows[i]["label"], "measured_gib": rows[i]["measured_gib"],
                                    "allocator_gap_gib": (rows[i].get("reserved_peak_gib") or 0)
                                    - rows[i]["torch_peak_gib"], "observed_kappa": obs[i],
                                    "class": base[i].allocator_class, "ce_chunk_gib": base[i].ce_chunk_gib,
                                    "replay_kappa": base[i].ce_replay_kappa})
            out["rows"][i][f"{name}_predicted_gib"] = p
            out["rows"][i][f"{name}_error_pct"] = e

    same, rec_probes, now_probes = probe_shapes_match(data["calibration"])
    out["recorded_probes_are_current"] = same
    if not same:
        print(f"note: the recorded kappa probes {rec_probes} are not today's {now_probes}: 'shipped' scores the "
              "recorded probes' offsets; a fresh GPU calibration (bench/estimate_validation.py) scores today's")
    # (shipped) the recorded calibration as it is: the first trial's prediction
    shipped = [estimate(c, device="cuda", calibration=recorded) for c in cfgs]
    report("shipped (recorded cal.)", [e.total_gib for e in shipped], subsets=True)
    for row, e in zip(out["rows"], shipped):
        row.update(peak_moment=e.peak_moment, recompute_gib=e.recompute_gib, recompute_hole_gib=e.recompute_hole_gib,
                   allocator_gib=e.allocator_gib)
    # (a) no refinement
    report("a) none (replay kappa)", [e.total_gib for e in base])
    # (b) leave one family out
    fams = [family(r["label"]) for r in rows]
    preds = []
    for i, c in enumerate(cfgs):
        train = {k: [obs[j] - base[j].ce_replay_kappa for j in range(len(rows))
                     if fams[j] != fams[i] and base[j].allocator_class == k and obs[j] is not None]
                 for k in ALLOCATOR_CLASSES}
        preds.append(estimate(c, device="cuda", calibration=with_offsets(cal0, train)).total_gib)
    report("b) leave-one-family-out", preds)
    # (c) online, in row order
    for use_reserved in ((True, False) if has_reserved else (False,)):
        cal, preds = cal0, []
        for c, r in zip(cfgs, rows):
            e = estimate(c, device="cuda", calibration=cal)
            preds.append(e.total_gib)
            cal = refine(cal, e, r["measured_gib"], r["torch_peak_gib"],
                         r["reserved_peak_gib"] if use_reserved else None)
        report(f"c) online{' +reserved' if use_reserved else ' nvml only'}", preds)
    print("observed - replayed kappa per class (median, min, max): " + ", ".join(
        f"{k}: {statistics.median(v):+.3f} [{min(v):+.3f}, {max(v):+.3f}]" for k in ALLOCATOR_CLASSES
        if (v := [o - e.ce_replay_kappa for o, e in zip(obs, base) if e.allocator_class == k and o is not None])))
    print("observed kappa per class (median, min, max): " + ", ".join(
        f"{k}: {statistics.median(v):.3f} [{min(v):.3f}, {max(v):.3f}] n={len(v)}"
        for k in ALLOCATOR_CLASSES
        if (v := [o for o, e in zip(obs, base) if e.allocator_class == k and o is not None])))
    if args.verbose:
        for r in out["rows"]:
            print(f"  {r['label']:<32} {r['class']:<4} F={r['ce_chunk_gib']:.3f} gap={r['allocator_gap_gib']:.3f} "
                  f"kappa={r['observed_kappa'] if r['observed_kappa'] is not None else float('nan'):.3f} "
                  f"replay={r['replay_kappa']:.3f} " + " ".join(
                      f"{v:+6.2f}%" for k, v in r.items() if k.endswith("_error_pct")))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
