"""tuner.storage.workers: a worker's clean exit is recorded on the study, a running trial's progress is stored at
most every few seconds; both are system attrs, so `optuna trials` does not print them. A real (trial-free) worker
run records its exit, and status then calls it `stopped`."""

from __future__ import annotations

import datetime as dt

import optuna

from tests.tuner.tiny import BASE
from tuner.commands.status import summarize
from tuner.storage.connect import open_storage
from tuner.storage.studies import load_study
from tuner.storage.workers import (
    PROGRESS_ATTR,
    ProgressRecorder,
    record_worker_exit,
    trial_progress,
    worker_exits,
)
from tuner.study.loader import spec_from_dict
from tuner.trial.worker import run_worker

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_exit_records_round_trip(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/w.db")
    study = optuna.create_study(storage=storage, study_name="s")
    assert worker_exits(storage, study) == {}
    record_worker_exit(storage, study, "host:1", "interrupted")
    exits = worker_exits(storage, study)
    assert list(exits) == ["host:1"] and exits["host:1"]["reason"] == "interrupted"
    assert abs((dt.datetime.now() - exits["host:1"]["at"]).total_seconds()) < 60
    assert study.user_attrs == {}  # not a user attr: `optuna studies` stays short


def test_progress_is_stored_throttled_and_forwarded(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/w.db")
    trial = study.ask()
    seen = []
    rec = ProgressRecorder(trial, seen.append, every_s=3600)
    rec({"step": 1, "tokens": 128, "loss": 7.0, "elapsed_s": 0.1})
    rec({"step": 2, "tokens": 256, "loss": 6.5, "elapsed_s": 0.2})  # within every_s: forwarded, not stored
    assert [m["step"] for m in seen] == [1, 2]
    (frozen,) = study.get_trials()
    stored = trial_progress(frozen)
    assert stored is not None and (stored["step"], stored["tokens"], stored["loss"]) == (1, 128, 7.0)
    assert PROGRESS_ATTR in frozen.system_attrs and frozen.user_attrs == {}
    ProgressRecorder(trial, None, every_s=0)({"step": 3, "tokens": 384, "loss": 6.0})
    assert trial_progress(study.get_trials()[0])["step"] == 3


def test_a_worker_that_stops_cleanly_is_shown_stopped(tmp_path):
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    spec = spec_from_dict(BASE, check_paths=False)
    assert run_worker(spec, storage=open_storage(url), seed=0, worker_id="host:7", n_trials=0,
                      install_signal_handlers=False) == 0  # fmt: skip
    storage = open_storage(url)
    study = load_study(spec.name, storage)
    assert worker_exits(storage, study)["host:7"]["reason"] == "done"
    (row,) = summarize(study, storage)["workers"]
    assert (row["worker"], row["state"], row["alive"]) == ("host:7", "stopped", False)
