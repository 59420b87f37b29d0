"""`tuner studies [--json]`: the studies in a storage; `tuner studies --delete NAME [--yes]`: delete one.

    tuner studies                          # name, objectives, trials by state, started, made by tuner or not
    tuner studies --delete quickstart      # asks "delete study quickstart and its 15 trials ...? [y/N]"
    tuner studies --delete quickstart --yes

Like `optuna studies` (list) and `optuna delete-study` (delete), on the tuner's storage resolution (--storage,
else $TUNER_STORAGE, else sqlite:///tuner.db). Without a terminal to ask on, --delete needs --yes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser
    p = subparsers.add_parser(
        "studies",
        help="list the studies in the storage, or delete one (--delete NAME)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per study")
    p.add_argument("--delete", default=None, metavar="NAME", help="delete this study and all its trials")
    p.add_argument("--yes", "-y", action="store_true", help="with --delete: do not ask for confirmation")
    return p


def study_rows(storage: Any) -> list[dict[str, Any]]:
    """One row per study: name, metric names, directions, trials by state, start time, tuner-made (has a spec)."""
    import optuna

    from tuner.storage._optuna_compat import study_id
    from tuner.storage.studies import spec_text

    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        states = Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))
        rows.append(
            {
                "name": summary.study_name,
                "metrics": study.metric_names,
                "directions": [d.name.lower() for d in summary.directions],
                "n_trials": summary.n_trials,
                "by_state": dict(sorted(states.items())),
                "datetime_start": None if summary.datetime_start is None else str(summary.datetime_start)[:19],
                "tuner": spec_text(storage, study_id(study)) is not None,
            }
        )
    return sorted(rows, key=lambda r: r["name"])


def run(args: argparse.Namespace) -> int:
    from tuner.storage.connect import storage_from_flag
    from tuner.storage.urls import mask_url

    url, storage = storage_from_flag(args.storage)
    if args.delete is not None:
        return delete(storage, mask_url(url), args.delete, args.yes)
    rows = study_rows(storage)
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return 0
    if not rows:
        print(f"no studies in {mask_url(url)}; create one with `tuner create STUDY.yaml` or `tuner run STUDY.yaml`")
        return 0
    print(f"{len(rows)} {'study' if len(rows) == 1 else 'studies'} in {mask_url(url)}")
    for r in rows:
        names = r["metrics"] or [f"objective{i}" for i in range(len(r["directions"]))]
        metrics = ", ".join(f"{m} ({d})" for m, d in zip(names, r["directions"]))
        states = ", ".join(f"{k} {v}" for k, v in r["by_state"].items()) or "no trials"
        origin = "" if r["tuner"] else "  [not made by tuner]"
        print(
            f"  {r['name']}: {r['n_trials']} trials ({states}); {metrics}; started {r['datetime_start'] or '-'}{origin}"
        )
    return 0


def delete(storage: Any, url: str, name: str, yes: bool) -> int:
    """Delete study `name` after a y/N prompt (or at once with `yes`). StorageError for an unknown name,
    TunerError when there is no terminal to ask on and `yes` is not given, exit 1 when the user says no."""
    import optuna

    from tuner.errors import TunerError
    from tuner.storage.studies import load_study

    study = load_study(name, storage)  # an unknown name: one line listing the studies there
    n = len(study.get_trials(deepcopy=False))
    if not yes:
        if not sys.stdin.isatty():
            raise TunerError(f"studies --delete {name}: no terminal to confirm on; add --yes to delete without asking")
        answer = input(f"delete study {name} and its {n} trials from {url}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not deleted")
            return 1
    optuna.delete_study(study_name=name, storage=storage)
    print(f"deleted study {name} ({n} trials) from {url}")
    return 0
