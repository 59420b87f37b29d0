"""`tuner pareto --study NAME [--json]`: the feasible Pareto front (Phase 1 trials within the VRAM ceiling), and the
study's reference (baseline) trial beside it: in --json a last row with `reference` set (null on the front's rows)
and `vs_best_phase1` (tuner.analysis.reference); in text a marked line after the front."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser
    p = subparsers.add_parser("pareto", help="the study's feasible Pareto front")
    p.add_argument("--study", required=True, metavar="NAME")
    p.add_argument("--json", action="store_true", help="print a JSON list of trials")
    return p


def run(args: argparse.Namespace) -> int:
    from tuner.analysis.formatting import params_text
    from tuner.analysis.pareto import pareto_front, trial_row
    from tuner.analysis.reference import describe_reference, reference_summary
    from tuner.storage.connect import storage_from_flag
    from tuner.storage.studies import load_study

    _, storage = storage_from_flag(args.storage, must_exist=True)
    study = load_study(args.study, storage)
    names = study.metric_names or [f"objective{i}" for i in range(len(study.directions))]
    trials = study.get_trials(deepcopy=False)
    front = pareto_front(trials, [d.name.lower() for d in study.directions])
    rows = [trial_row(t, names) for t in front]
    ref = reference_summary(trials, names)
    if args.json:
        if ref is not None:
            row = trial_row(next(t for t in trials if t.number == ref["trial"]), names)
            row["vs_best_phase1"] = ref["best_phase1"]
            rows.append(row)
        print(json.dumps(rows, sort_keys=True))
        return 0
    if not rows:
        print(f"study {args.study}: no feasible completed trial yet")
        for line in describe_reference(ref):
            print(line)
        return 0
    print("trial  " + "  ".join(f"{n:>14}" for n in names) + "  constraint_gib  params")
    for r in rows:
        values = "  ".join(f"{r['values'][n]:>14.6g}" for n in names)
        c = r["constraint_gib"]
        params = params_text(r["params"])
        print(f"{r['number']:>5}  {values}  {('n/a' if c is None else f'{c:+.3f}'):>14}  {params}")
    for line in describe_reference(ref):
        print(line)
    return 0
