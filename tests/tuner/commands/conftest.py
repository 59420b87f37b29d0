"""A study with results, for the commands that read one (pareto, export, report, status)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.tuner.tiny import mutate, write
from tuner.storage.constraints import set_trial_constraint

CEILING = 8.0
# (val_ppl, peak_vram_gib, state, end_reason): feasible 0-2 (front: 0 and 1), 3 over the ceiling, 4 pruned.
RESULTS = [
    (300.0, 2.0, "COMPLETE", "complete"),
    (200.0, 6.0, "COMPLETE", "complete"),
    (320.0, 6.5, "COMPLETE", "complete"),  # dominated by trial 1
    (150.0, 9.0, "COMPLETE", "vram_ceiling"),  # best PPL, but over the ceiling: never on the front
    (None, None, "PRUNED", "learning_curve"),
]


@dataclass
class ResultsStudy:
    url: str
    name: str
    study_file: Path
    study: Any


def _params(i: int) -> dict[str, Any]:
    return {
        "ar_ssm_max_rank": 8 * (1 + i % 4),
        "ar_ssm_min_rank": 2 + i % 3,
        "ar_ssm_l1_regularization": 1e-3,
        "use_gradient_checkpointing": True,
    }


@pytest.fixture
def results_study(tmp_path) -> ResultsStudy:
    """The tiny study created in a SQLite file by `tuner create`'s code path, holding RESULTS as finished trials
    (values, the recorded VRAM constraint, end_reason and the trial's config, as a worker records them)."""
    from tuner.storage.connect import open_storage
    from tuner.storage.studies import create_or_load_study
    from tuner.study.loader import load_spec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_file = write(tmp_path, mutate(name="results", vram_ceiling_gib=CEILING, n_trials=10))
    spec = load_spec(study_file)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    study = create_or_load_study(spec, open_storage(url))
    dists = {p.name: p.distribution() for p in spec.space.params}
    for i, (ppl, vram, state, reason) in enumerate(RESULTS):
        params = _params(i)
        trial = optuna.trial.create_trial(
            state=optuna.trial.TrialState[state],
            values=None if ppl is None else [ppl, vram],
            params=params,
            distributions={k: dists[k] for k in params},
            user_attrs={"end_reason": reason, "config": spec.build_config(params).to_dict(), "device": "cpu"},
        )
        if vram is not None:
            set_trial_constraint(trial, vram - CEILING)
        study.add_trial(trial)
    return ResultsStudy(url, "results", study_file, study)
