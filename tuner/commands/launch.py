"""`tuner launch STUDY.yaml`: create the study if needed and supervise workers, one or several per GPU (or N on CPU).

    tuner launch studies/phase1_8gb.yaml --gpus all|0,1 [--per-gpu auto|N] [--mps auto|on|off] [--storage URL]
    tuner launch studies/quickstart.yaml --workers 2 [--per-gpu N] [--stop-after DURATION]

--per-gpu auto sizes the workers of each GPU from its free memory (NVML), the study's ceiling and the estimator's
largest prediction for the space, plus each process's CUDA context, leaving headroom (tuner.trial.packing); --per-gpu
N is checked against the same sum. A crashed worker is restarted (at most --max-restarts times); SIGTERM is forwarded
to every worker, whose current trials end as `interrupted` and are re-enqueued; launch exits 0 within 30 s.
--stop-after DURATION (fixed when launch starts) ends a time window without losing work: no worker takes a new trial
after it, running trials train to their end and are recorded, and launch exits 0 saying the window ended; the
study's remaining budget is left for the next launch.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tuner.commands import add_heartbeat_options, add_stop_after_option, int_at_least, window_deadline

STATUS_EVERY_S = 60.0  # the worker lines' period when stdout is not a terminal (a log): a terminal refreshes live


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser
    p = subparsers.add_parser(
        "launch",
        help="supervise workers: --per-gpu on each GPU (or --workers N on CPU)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("study_file", metavar="STUDY.yaml", help="study definition")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--gpus", help="'all' or a comma-separated list of GPU indices, e.g. 0,1")
    which.add_argument("--workers", type=int_at_least(1), help="number of worker slots without GPUs (CPU)")
    p.add_argument(
        "--per-gpu",
        default=None,
        help="workers per GPU (per slot with --workers): N, or 'auto' to fit as many as the card's free memory "
        "holds at the study's ceiling (default 1)",
    )
    p.add_argument(
        "--mps",
        choices=("auto", "on", "off"),
        default="auto",
        help="NVIDIA MPS for several workers per GPU: auto uses or starts a daemon when possible, else time-slicing",
    )
    p.add_argument(
        "--n-trials", type=int_at_least(1), default=None, help="trials in total (default: the file's n_trials)"
    )
    p.add_argument(
        "--max-restarts", type=int_at_least(0), default=3, help="restarts per crashed worker before giving up"
    )
    p.add_argument("--cache-dir", default=None, help="tokenized-data cache shared by the workers")
    add_stop_after_option(p, launch=True)
    add_heartbeat_options(p)
    p.set_defaults(func=run)
    return p


def parse_per_gpu(text: str | None) -> int | None:
    """'auto' -> None, 'N' -> N (>= 1); no flag -> 1. Raises TunerError with the fix."""
    from tuner.errors import TunerError

    if text is None:
        return 1
    if text.strip().lower() == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        raise TunerError(f"--per-gpu {text!r}: expected a whole number of workers or 'auto'") from None
    if n < 1:
        raise TunerError(f"--per-gpu {n}: give at least 1 (or auto)")
    return n


def plan_counts(
    spec: Any, gpus: list[int], per_gpu: int | None, choice: Any
) -> tuple[list[int], float | None, list[str]]:
    """Workers for each of `gpus` (tuner.trial.packing.plan_gpu on each card's free memory), the reference trial's
    ceiling (GiB; None without a `baseline:`) and one description line per GPU. `choice`: the first GPU's
    tuner.vram.calibration.CalibrationChoice, for the largest predicted peak. Raises TunerError when a count does
    not fit."""
    from tuner.errors import TunerError
    from tuner.trial.packing import cpu_workers_cap, largest_predicted_gib, plan_gpu
    from tuner.vram.nvml import NvmlUnavailable, nvml_memory_gib

    predicted = largest_predicted_gib(spec, choice.calibration, calibrated=choice.calibrated)
    cap = cpu_workers_cap(len(gpus))
    counts, lines, references = [], [], []
    for g in gpus:
        try:
            total, free = nvml_memory_gib(g)
        except (NvmlUnavailable, IndexError) as e:
            raise TunerError(f"--per-gpu: GPU {g}: {e}") from None
        plan = plan_gpu(
            free,
            total,
            float(spec.vram_ceiling_gib),
            predicted,
            per_gpu=per_gpu,
            has_reference=spec.baseline is not None,
            max_workers=cap,
        )
        counts.append(plan.count)
        if plan.reference_gib is not None:
            references.append(plan.reference_gib)
        lines.append(
            f"GPU {g}: {plan.count} worker(s) x {plan.share_gib:.1f} GiB ({plan.basis}"
            + (f", largest predicted {predicted:.2f} GiB" if predicted is not None else "")
            + f"), {plan.planned_gib:.1f} of {plan.usable_gib:.1f} GiB usable ({free:.1f} free of {total:.1f})"
            + (f", at most {cap} by CPU cores" if per_gpu is None and plan.count == cap else "")
        )
    return counts, (min(references) if references else None), lines


def calibration_note(spec: Any, choice: Any) -> str | None:
    """One line when the study's pre-flight estimate would run without this GPU's calibration (`choice`: a
    tuner.vram.calibration.CalibrationChoice), else None. Uncalibrated, the estimate leaves out what the process holds
    outside PyTorch's allocator (~0.8-1.3 GiB on an H100), so it refuses too few configs near the ceiling."""
    if not spec.estimate.enabled or choice.calibrated:
        return None
    return f"VRAM estimate {choice.source}"


def window_line(stop_after_s: float, left_s: float) -> str:
    """What --stop-after means for this launch, with the local time it ends (`left_s` from now: launch's start-up
    has already used some of the window)."""
    import datetime

    ends = datetime.datetime.now() + datetime.timedelta(seconds=max(left_s, 0.0))
    return (
        f"window {stop_after_s:g} s (--stop-after): no new trial after {ends:%H:%M:%S}; running trials finish and "
        "are recorded"
    )


def run(args: argparse.Namespace) -> int:
    from tuner.errors import TunerError
    from tuner.storage.connect import open_storage
    from tuner.storage.studies import create_or_load_study
    from tuner.storage.urls import mask_url, resolve_storage_url
    from tuner.study.loader import load_spec
    from tuner.trial.launch_view import LaunchDisplay
    from tuner.trial.launcher import Launcher, parse_gpus
    from tuner.trial.mps import MpsState, cuda_probe, prepare_mps, stop_mps
    from tuner.trial.packing import REFERENCE_CEILING_ENV
    from tuner.vram.calibration import choose_calibration
    from tuner.vram.nvml import current_device_key, nvml_available

    deadline = window_deadline(args)  # absolute: fixed now, so restarts and late starts get only the time left
    spec = load_spec(args.study_file)
    if args.workers is not None and args.workers < 1:
        raise TunerError(f"--workers {args.workers}: give at least 1")
    per_gpu = parse_per_gpu(args.per_gpu)
    if per_gpu is None and not nvml_available():
        raise TunerError(
            "--per-gpu auto sizes workers from GPU memory and there is no GPU here (NVML did not start); "
            "give --per-gpu N"
        )
    if per_gpu is None and args.gpus is None:
        raise TunerError("--per-gpu auto sizes workers from GPU memory: use it with --gpus, or give --per-gpu N")
    gpus = parse_gpus(args.gpus) if args.gpus is not None else None
    url = resolve_storage_url(getattr(args, "storage", None))
    storage = open_storage(url)
    create_or_load_study(spec, storage)
    extra = ["--quiet"] + (["--cache-dir", args.cache_dir] if args.cache_dir else [])
    extra += ["--heartbeat-s", str(args.heartbeat_s)] if args.heartbeat_s is not None else []
    extra += ["--grace-s", str(args.grace_s)] if args.grace_s is not None else []
    env: dict[str, str] = {}
    counts: list[int] | int = per_gpu or 1
    plan_lines: list[str] = []
    packed = gpus is not None and args.per_gpu is not None
    # the first GPU's calibration: it sizes packed workers and, missing, is said below
    choice = choose_calibration(None, current_device_key(gpus[0])) if gpus is not None else None
    if packed and gpus is not None:
        counts, reference_gib, plan_lines = plan_counts(spec, gpus, per_gpu, choice)
        if reference_gib is not None:
            env[REFERENCE_CEILING_ENV] = f"{reference_gib:.3f}"
    several = gpus is not None and max(counts if isinstance(counts, list) else [counts]) > 1
    try:
        mps = MpsState("time-slicing", False, "one worker per GPU")
        if several and gpus is not None:
            first = gpus[0]
            mps = prepare_mps(args.mps, probe=lambda: cuda_probe(first))
    except RuntimeError as e:
        raise TunerError(str(e)) from None
    env.update(mps.env)
    launcher = Launcher(
        spec.name,
        url,
        gpus=gpus,
        workers=args.workers,
        n_trials=args.n_trials,
        max_restarts=args.max_restarts,
        extra_args=extra,
        per_gpu=counts,
        extra_env=env,
        deadline=deadline,
    )
    where = f", GPUs {','.join(map(str, gpus))}" if gpus is not None else " (CPU)"
    print(f"launch: {len(launcher.slots)} worker(s) on study {spec.name} at {mask_url(url)}{where}", flush=True)
    for line in plan_lines:
        print(f"launch: {line}", flush=True)
    if args.stop_after is not None:
        print(f"launch: {window_line(args.stop_after, launcher.time_left_s() or 0.0)}", flush=True)
    if gpus is not None:
        print(f"launch: {'MPS' if mps.active else 'time-slicing'} ({mps.reason})", flush=True)
        note = calibration_note(spec, choice)
        if note is not None:
            print(f"launch: warning: {note}", flush=True)
    display = LaunchDisplay(launcher, live=sys.stdout.isatty(), every_s=STATUS_EVERY_S)
    launcher.on_line, launcher.on_tick = display.line, display.tick
    try:
        with display:
            code = launcher.run()
    finally:
        stop_mps(mps)
    display.summary(storage, spec.name)
    return code
