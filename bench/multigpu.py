"""Every GPU of a host: trained trials per hour with one GPU, with all of them (one worker each, one worker killed
mid-run), and with all of them packed (`--per-gpu auto`); same study, same run.

    python bench/multigpu.py --train-tokens 500000 --window-s 130     # GPU host: writes bench/results/multigpu.json
    python bench/multigpu.py --tiny --out /tmp/multigpu.json           # CPU proof (worker slots stand in for GPUs)

An uncounted warm-up window on every GPU (--warmup-s: Triton's kernel cache and the page cache filled), then three
consecutive windows of `tuner launch STUDY` on fresh SQLite files (data tokenized once before them, shared cache),
each stopped with SIGTERM after --window-s: `--gpus 0`, `--gpus all`, `--gpus all --per-gpu auto`.
In the `--gpus all` window one worker process is SIGKILLed at a quarter of the window; launch must restart it, and
its trial, failed by the heartbeat (2 s beats, 8 s grace in that window), must be retried: a worker_lost trial
without a retry, or a trial left RUNNING after launch exits, is a lost trial (`restarted_worker_lost_trials`).
NVML is sampled every second: which process uses which GPU (`pids_on_several_gpus` must be empty), per-process
and per-card memory, utilization. Counted: COMPLETE trials that trained (not predicted_over_ceiling) completed
inside the window. `--tiny`: the same on CPU with `--workers 1`, `--workers 2`, `--workers 2 --per-gpu 2`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo's packages (the project is not pip-installed)

from bench._common import RESULTS, device_header, write_json  # noqa: E402
from bench._launch import prepare_workdir, run_window, window_trials  # noqa: E402


def _gpu_count() -> int:
    try:
        from tuner.vram.nvml import nvml_device_count

        return nvml_device_count()
    except Exception:  # noqa: BLE001 - no NVML: a CPU machine
        return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", type=Path, default=ROOT / "studies" / "phase1_8gb.yaml")
    ap.add_argument(
        "--window-s", type=float, default=None, help="(default 130; --tiny 50) seconds per window (three windows run)"
    )
    ap.add_argument(
        "--warmup-s",
        type=float,
        default=None,
        help="(default 45; --tiny 0) an uncounted first window on every GPU: Triton's kernel cache and the page cache "
        "are warm before the counted windows, so the first counted window does not pay for them",
    )
    ap.add_argument("--train-tokens", type=int, default=500_000, help="override the study's budget.train_tokens")
    ap.add_argument("--eval-tokens", type=int, default=None, help="override the study's budget.eval_tokens")
    ap.add_argument("--mps", default="auto", choices=("auto", "on", "off"), help="the packed window's --mps")
    ap.add_argument("--tiny", action="store_true", help="CPU proof: worker slots stand in for GPUs")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/multigpu.json)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if args.window_s is None:
        args.window_s = 50.0 if args.tiny else 130.0
    if args.warmup_s is None:
        args.warmup_s = 0.0 if args.tiny else 45.0
    n_gpus = _gpu_count()
    if args.tiny:
        n_slots = 2
    elif n_gpus == 0:
        print("error: no GPU here (NVML did not start); use --tiny for the CPU proof", file=sys.stderr)
        return 2
    else:
        n_slots = n_gpus
    out = args.out or (RESULTS / "multigpu.json" if not args.tiny else Path(tempfile.gettempdir()) / "multigpu.json")
    work, study_file, data, cache, prep_s = prepare_workdir(
        None if args.tiny else args.study,
        args.workdir,
        "bench-multigpu-",
        train_tokens=None if args.tiny else args.train_tokens,
        eval_tokens=args.eval_tokens,
    )

    if args.tiny:
        windows = {
            "one": ["--workers", "1"],
            "all": ["--workers", str(n_slots)],
            "all_packed": ["--workers", str(n_slots), "--per-gpu", "2"],
        }
    else:
        windows = {
            "one": ["--gpus", "0"],
            "all": ["--gpus", "all"],
            "all_packed": ["--gpus", "all", "--per-gpu", "auto", "--mps", args.mps],
        }
    warmup = None
    if args.warmup_s > 0:
        warm = run_window(study_file, work / "warmup", cache, windows["all"], args.warmup_s)
        warmup = {"window_s": args.warmup_s, "launch_args": windows["all"], **window_trials(warm, data["name"])}
        print(f"warm-up window ({args.warmup_s:.0f} s, not counted) done", flush=True)
    rows = {}
    for label, launch_args in windows.items():
        kill = label == "all"
        run = run_window(
            study_file,
            work / label,
            cache,
            launch_args,
            args.window_s,
            kill_worker_at_s=args.window_s / 4 if kill else None,
            heartbeat=(2, 8) if kill else (5, 20),
        )
        rows[label] = {
            "launch_args": launch_args,
            **{k: v for k, v in run.items() if k != "log_tail"},
            **window_trials(run, data["name"]),
            "log_tail": run["log_tail"],
        }
        print(label, json.dumps({k: v for k, v in rows[label].items() if k != "log_tail"}, default=str), flush=True)

    killed = rows["all"]
    per_gpu = [
        int(n) for n in re.findall(r"launch: GPU \d+: (\d+) worker", "\n".join(rows["all_packed"]["plan_lines"]))
    ]
    if args.tiny:
        per_gpu = [2] * n_slots
    result = {
        **device_header(),
        "n_gpus": n_gpus if not args.tiny else 0,
        "trials_per_hour_one": rows["one"]["trials_per_hour"],
        "trials_per_hour_all": killed["trials_per_hour"],
        "per_gpu": per_gpu[0] if per_gpu and len(set(per_gpu)) == 1 else per_gpu,
        "trials_per_hour_all_packed": rows["all_packed"]["trials_per_hour"],
        "restarted_worker_lost_trials": len(killed["lost_trials"]) + killed["running_left"],
        "scaling_all_over_one": killed["trials_per_hour"] / rows["one"]["trials_per_hour"]
        if rows["one"]["trials_per_hour"]
        else None,
        "worker_killed_and_restarted": killed["killed_worker_pid"] is not None and killed["restarted"],
        "killed_trial_fate": killed["killed_trial_fate"],
        "pids_on_several_gpus": sorted({p for r in rows.values() for p in r["nvml"]["pids_on_several_gpus"]}),
        "pids_on_another_gpu_than_their_worker": sorted(
            {tuple(x) for r in rows.values() for x in r["nvml"].get("pids_on_another_gpu_than_their_worker", [])}
        ),
        "window_s": args.window_s,
        "warmup_s": args.warmup_s,
        "mps_server_pids": sorted({p for r in rows.values() for p in r["nvml"].get("mps_server_pids", [])}),
        "train_tokens": data["budget"]["train_tokens"],
        "note": (
            "CPU proof: --workers slots stand in for GPUs; not a GPU figure"
            if args.tiny
            else "train_tokens overridden by --train-tokens; the 'all' window has one worker SIGKILLed at a quarter "
            "of the window (its throughput includes that loss)"
        ),
        "data_prep_s": round(prep_s, 1),
        "command": " ".join(sys.argv),
        "runs": rows,
        "warmup": warmup,
    }
    write_json(out, result, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1, default=str))
    print(f"wrote {out}")
    ok = all(r["exit_code"] == 0 for r in rows.values()) and result["restarted_worker_lost_trials"] == 0
    return 0 if ok and result["worker_killed_and_restarted"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
