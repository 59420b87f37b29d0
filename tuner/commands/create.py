"""`tuner create STUDY.yaml`: validate a study file, then create its study in the storage (presets enqueued)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser
    p = subparsers.add_parser(
        "create",
        help="validate a study file and create its study (idempotent)",
        description="Validate STUDY.yaml completely, then create the study in the storage "
        "with its presets enqueued; an existing identical study is left as is.",
    )
    p.add_argument("study_file", metavar="STUDY.yaml", help="study definition (see studies/)")
    return p


def run(args: argparse.Namespace) -> int:
    from tuner.storage.connect import storage_from_flag
    from tuner.storage.studies import create_or_load_study, study_names
    from tuner.storage.urls import mask_url
    from tuner.study.loader import load_spec

    spec = load_spec(args.study_file)  # every spec error surfaces here, before storage is touched
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line below says what was created; not Optuna's
    url, storage = storage_from_flag(args.storage)
    existed = spec.name in study_names(storage)
    study = create_or_load_study(spec, storage)
    waiting = sum(1 for t in study.get_trials(deepcopy=False) if t.state.name == "WAITING")
    verb = "exists" if existed else "created"
    print(
        f"study {spec.name} {verb} in {mask_url(url)}: objectives {', '.join(spec.metric_names)}, "
        f"{len(spec.space.params)} parameters, {waiting} enqueued trial(s) waiting"
    )
    return 0
