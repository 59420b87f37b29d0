"""A worker's status file for `tuner launch`'s lines (tuner.trial.worker_status): written by the worker's hooks,
read back whole, progress throttled, a missing or torn file read as no status."""

from __future__ import annotations

import json
from types import SimpleNamespace

import optuna

from tuner.trial import worker_status
from tuner.trial.worker_status import StatusWriter, WorkerStatus, chain


def test_a_trial_start_progress_and_end_are_written_and_read_back(tmp_path, monkeypatch):
    path = tmp_path / "w0.json"
    w = StatusWriter(path, "host:42:gpu0", 42, 0)
    assert WorkerStatus.read(path) == WorkerStatus("host:42:gpu0", 42, 0, updated=w.status.updated)
    w.trial_start(7, {"lr": 1e-3})
    s = WorkerStatus.read(path)
    assert s is not None and (s.trial, s.step, s.tokens) == (7, 0, 0)
    monkeypatch.setattr(worker_status, "WRITE_EVERY_S", 0.0)
    w.progress({"step": 12, "tokens": 3072, "loss": 5.0, "trial": 7})
    s = WorkerStatus.read(path)
    assert s is not None and (s.step, s.tokens) == (12, 3072)
    w.trial_end(None, SimpleNamespace(state=optuna.trial.TrialState.PRUNED))
    w.trial_end(None, SimpleNamespace(state=optuna.trial.TrialState.COMPLETE))
    s = WorkerStatus.read(path)
    assert s is not None and s.trial is None and s.finished == {"pruned": 1, "complete": 1}


def test_progress_is_throttled(tmp_path, monkeypatch):
    path = tmp_path / "w0.json"
    w = StatusWriter(path, "h:1", 1, None)
    w.trial_start(0, {})
    monkeypatch.setattr(worker_status, "WRITE_EVERY_S", 3600.0)
    w.progress({"step": 5, "tokens": 10})
    assert json.loads(path.read_text())["step"] == 0  # not yet written: within the period


def test_missing_or_torn_files_read_as_none(tmp_path):
    assert WorkerStatus.read(tmp_path / "nope.json") is None
    (tmp_path / "torn.json").write_text('{"worker": "h:1", "pi')
    assert WorkerStatus.read(tmp_path / "torn.json") is None
    (tmp_path / "alien.json").write_text('{"unexpected": 1}')
    assert WorkerStatus.read(tmp_path / "alien.json") is None


def test_chain_calls_each_in_order_and_skips_none():
    seen: list[str] = []
    f = chain(lambda x: seen.append(f"a{x}"), None, lambda x: seen.append(f"b{x}"))
    assert f is not None
    f(1)
    assert seen == ["a1", "b1"] and chain(None, None) is None
