"""Packing on one GPU: trained trials per hour with one worker against `--per-gpu auto`, same run, same study.

    python bench/packing.py --train-tokens 500000 --window-s 200          # GPU: writes bench/results/packing.json
    python bench/packing.py --tiny --out /tmp/packing.json                 # CPU proof: --workers 1 vs --per-gpu 2

Two consecutive windows of `tuner launch STUDY --gpus 0` (then `--gpus 0 --per-gpu auto --mps auto`), each on its
own SQLite file, each stopped with SIGTERM after --window-s seconds; the data is tokenized once before both
(shared cache). Counted: trials that trained (COMPLETE, not predicted_over_ceiling) and completed inside the window
(bench/_launch.py). The study's train_tokens is overridden by --train-tokens so a short window holds several trials;
the JSON says so. NVML is sampled every second: the largest per-process memory of any worker's trial child, the
card's total, utilization. `--tiny` runs the same code on CPU with a two-layer study (`--workers 1` vs
`--workers 1 --per-gpu 2`), to prove the script; its figures are not GPU figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo's packages (the project is not pip-installed)

from bench._common import RESULTS, device_header, write_json  # noqa: E402
from bench._launch import prepare_workdir, run_window, window_trials  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", type=Path, default=ROOT / "studies" / "phase1_8gb.yaml")
    ap.add_argument(
        "--window-s", type=float, default=None, help="(default 200; --tiny 45) seconds per window (two windows run)"
    )
    ap.add_argument("--train-tokens", type=int, default=500_000, help="override the study's budget.train_tokens")
    ap.add_argument("--eval-tokens", type=int, default=None, help="override the study's budget.eval_tokens")
    ap.add_argument("--per-gpu", default="auto", help="the packed window's --per-gpu (default auto)")
    ap.add_argument("--mps", default="auto", choices=("auto", "on", "off"))
    ap.add_argument("--gpu", default="0", help="the GPU both windows use")
    ap.add_argument("--tiny", action="store_true", help="CPU proof: tiny study, --workers 1 vs --per-gpu 2")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/packing.json)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the SQLite files, logs and cache go")
    args = ap.parse_args()
    if args.window_s is None:
        args.window_s = 45.0 if args.tiny else 200.0
    if args.tiny:
        args.per_gpu = "2" if args.per_gpu == "auto" else args.per_gpu
    out = args.out or (RESULTS / "packing.json" if not args.tiny else Path(tempfile.gettempdir()) / "packing_tiny.json")
    work, study_file, data, cache, prep_s = prepare_workdir(
        None if args.tiny else args.study,
        args.workdir,
        "bench-packing-",
        train_tokens=None if args.tiny else args.train_tokens,
        eval_tokens=args.eval_tokens,
    )

    where = ["--workers", "1"] if args.tiny else ["--gpus", args.gpu]
    windows = {
        "one": where,
        "packed": [*where, "--per-gpu", args.per_gpu] + ([] if args.tiny else ["--mps", args.mps]),
    }
    rows = {}
    for label, launch_args in windows.items():
        run = run_window(study_file, work / label, cache, launch_args, args.window_s)
        rows[label] = {
            "launch_args": launch_args,
            **{k: v for k, v in run.items() if k != "log_tail"},
            **window_trials(run, data["name"]),
            "log_tail": run["log_tail"],
        }
        print(
            label, json.dumps({k: v for k, v in rows[label].items() if k not in ("log_tail",)}, default=str), flush=True
        )

    packed = rows["packed"]
    mps_line = packed.get("mps_line") or ""
    result = {
        **device_header(),
        "study": str(args.study.relative_to(ROOT) if args.study.is_relative_to(ROOT) else args.study)
        if not args.tiny
        else "bench/_launch.py TINY_STUDY (CPU proof)",
        "window_s": args.window_s,
        "workers_per_gpu": packed["workers"],
        "mps": None if args.tiny else mps_line.startswith("launch: MPS"),
        "trials_per_hour_one": rows["one"]["trials_per_hour"],
        "trials_per_hour_packed": packed["trials_per_hour"],
        # the 1 Hz sampler's largest process, or the guard's 20 Hz peak of any trial, whichever is larger
        "max_nvml_gib_per_worker": max(packed["nvml"]["max_gib_per_process"], packed["max_trial_nvml_peak_gib"] or 0.0)
        if packed["nvml"]["nvml"]
        else None,
        "ceiling_gib": float(data["vram_ceiling_gib"]),
        "speedup": packed["trials_per_hour"] / rows["one"]["trials_per_hour"]
        if rows["one"]["trials_per_hour"]
        else None,
        "mean_gpu_util_one": rows["one"]["nvml"]["mean_util_by_gpu"],
        "mean_gpu_util_packed": packed["nvml"]["mean_util_by_gpu"],
        "median_gpu_busy_frac_one": rows["one"]["median_gpu_busy_frac"],
        "median_gpu_busy_frac_packed": packed["median_gpu_busy_frac"],
        "max_card_used_gib_packed": packed["nvml"]["max_used_gib_by_gpu"],
        "trained_nvml_pid_unseen": packed["trained_nvml_pid_unseen"],
        "train_tokens": data["budget"]["train_tokens"],
        "train_tokens_overridden": not args.tiny,
        "note": (
            "CPU proof of the script (--tiny): not a GPU figure"
            if args.tiny
            else "train_tokens overridden by --train-tokens so a window holds several trials"
        )
        + "; counted: COMPLETE trials that trained (not predicted_over_ceiling) completed inside each window",
        "mps_line": mps_line,
        "data_prep_s": round(prep_s, 1),
        "command": " ".join(sys.argv),
        "runs": rows,
    }
    write_json(out, result, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1, default=str))
    print(f"wrote {out}")
    ok = all(r["exit_code"] == 0 and r["running_left"] == 0 for r in rows.values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
