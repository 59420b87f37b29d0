"""`tuner status --study NAME [--json]`: trials by state and end reason, workers alive, best feasible, hypervolume,
and the reference (baseline) trial beside the best feasible Phase 1 trial (key `reference`, null without one)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser
    p = subparsers.add_parser("status", help="a study's progress: states, end reasons, workers, best, hypervolume")
    p.add_argument("--study", required=True, metavar="NAME")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--alive-within-s",
        type=float,
        default=300.0,
        metavar="S",
        help="a worker seen within S seconds counts as alive (default 300)",
    )
    return p


def summarize(study: Any, storage: Any, alive_within_s: float = 300.0) -> dict[str, Any]:
    from tuner.analysis.pareto import status_summary
    from tuner.analysis.reference import reference_summary
    from tuner.storage.studies import heartbeat_ages_s, study_spec

    spec = study_spec(study)
    trials = study.get_trials(deepcopy=False)
    model = spec.build_config({}) if spec is not None else None
    summary = status_summary(
        trials,
        study.metric_names or [f"objective{i}" for i in range(len(study.directions))],
        [d.name.lower() for d in study.directions],
        vocab_size=model.vocab_size if model else None,
        ceiling_gib=spec.vram_ceiling_gib if spec else None,
        heartbeat_age_s=heartbeat_ages_s(storage, study),
        alive_within_s=alive_within_s,
    )
    summary["reference"] = reference_summary(trials, study.metric_names or [])
    summary["study"] = study.study_name
    summary["vram_ceiling_gib"] = spec.vram_ceiling_gib if spec else None
    summary["metric_names"] = study.metric_names
    return summary


def run(args: argparse.Namespace) -> int:
    from tuner.analysis.reference import describe_reference
    from tuner.storage.connect import storage_from_flag
    from tuner.storage.studies import load_study
    from tuner.storage.urls import mask_url

    url, storage = storage_from_flag(args.storage, must_exist=True)
    study = load_study(args.study, storage)
    s = summarize(study, storage, args.alive_within_s)
    if args.json:
        print(json.dumps(s, sort_keys=True))
        return 0
    print(f"study {s['study']} in {mask_url(url)}  (ceiling {s['vram_ceiling_gib']} GiB)")
    print(f"trials: {s['n_trials']}  " + "  ".join(f"{k.lower()} {v}" for k, v in s["by_state"].items()))
    if s["by_end_reason"]:
        print("end reasons: " + "  ".join(f"{k} {v}" for k, v in s["by_end_reason"].items()))
    print(
        f"feasible {s['feasible']}  infeasible (over the ceiling) {s['infeasible']}  "
        f"pareto front {s['pareto_size']}  hypervolume {_fmt(s['hypervolume'])}"
    )
    for metric, best in s["best_feasible"].items():
        print(f"best feasible {metric}: " + (f"{best['value']:.6g} (trial {best['trial']})" if best else "none yet"))
    for line in describe_reference(s["reference"]):
        print(line)
    alive = [w for w in s["workers"] if w["alive"]]
    print(f"workers: {len(alive)} alive of {len(s['workers'])} seen")
    for w in s["workers"]:
        running = f", running trial {w['running']}" if w["running"] else ""
        print(
            f"  {w['worker']}: {'alive' if w['alive'] else 'gone'}, last seen {_fmt(w['last_seen_s'])} s ago, "
            f"{w['trials']} trials{running}"
        )
    return 0


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"
