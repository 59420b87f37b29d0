"""Long per-trial data lives in one system attr (`tuner:details`), out of `optuna trials`' output: set_trial_attr
routes it there for running and frozen trials, trial_attr reads it back (and from user attrs on older trials),
retry_details keeps only what a retry shares with the failed attempt."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna

from tuner.storage.trial_attrs import (
    DETAILS_ATTR,
    retry_details,
    set_trial_attr,
    trial_attr,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
OPTUNA_CLI = "import sys; from optuna.cli import main; sys.exit(main())"  # the `optuna` console script
CURVE = [{"tokens": t, "val_ppl": 1000.0 / t} for t in range(1, 200)]


def test_running_trial_details_go_to_one_system_attr(tmp_path):
    url = f"sqlite:///{tmp_path}/a.db"
    study = optuna.create_study(storage=url, study_name="s")
    trial = study.ask()
    set_trial_attr(trial, "curve", CURVE)
    set_trial_attr(trial, "config", {"d_model": 64})
    set_trial_attr(trial, "end_reason", "complete")  # not a detail: a user attr
    assert trial_attr(trial, "curve") == CURVE  # read through the storage while running
    study.tell(trial, 1.0)
    (frozen,) = study.get_trials()
    assert frozen.user_attrs == {"end_reason": "complete"}
    assert set(frozen.system_attrs[DETAILS_ATTR]) == {"curve", "config"}
    assert trial_attr(frozen, "config") == {"d_model": 64} and trial_attr(frozen, "end_reason") == "complete"
    # what the user sees: `optuna trials` prints user attrs only, so the curve is not in its output
    out = subprocess.run(
        [sys.executable, "-c", OPTUNA_CLI, "trials", "--study-name", "s", "--storage", url, "-f", "json"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert "val_ppl" not in out and json.loads(out)[0]["user_attrs"] == {"end_reason": "complete"}


def test_frozen_trials_and_older_user_attrs():
    ft = optuna.trial.create_trial(value=1.0, user_attrs={"curve": CURVE[:2]})  # recorded before tuner:details
    assert trial_attr(ft, "curve") == CURVE[:2] and trial_attr(ft, "estimate", "none") == "none"
    set_trial_attr(ft, "estimate", {"total_gib": 0.5})
    assert ft.system_attrs[DETAILS_ATTR] == {"estimate": {"total_gib": 0.5}}
    assert trial_attr(ft, "estimate") == {"total_gib": 0.5}


def test_a_retry_keeps_config_and_estimate_only():
    attrs = {
        "constraints": [0.1],
        "tuner:progress": {"step": 3},
        DETAILS_ATTR: {"config": {"a": 1}, "estimate": {"b": 2}, "curve": CURVE, "stability": {"det": 1.0}},
    }
    kept = retry_details(attrs)
    assert kept == {"constraints": [0.1], DETAILS_ATTR: {"config": {"a": 1}, "estimate": {"b": 2}}}
    assert "curve" in attrs[DETAILS_ATTR]  # the failed trial's own record is untouched
