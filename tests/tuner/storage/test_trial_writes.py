"""Buffered trial attr writes (tuner.storage.trial_writes): nothing reaches storage before flush, one transaction at
flush (on SQLite and Postgres), the per-attr fallback for storages without a batch write, and a finished trial
refused as Optuna refuses it."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy as sa

from tuner.storage._optuna_compat import trial_id
from tuner.storage.connect import open_storage
from tuner.storage.constraints import set_trial_constraint
from tuner.storage.trial_writes import TrialWrites


def _stored(storage, trial) -> optuna.trial.FrozenTrial:
    return storage.get_trial(trial_id(trial))


def test_flush_writes_everything_in_one_transaction(storage_url):
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, directions=["minimize", "minimize"])
    trial = study.ask()
    writes = TrialWrites(trial)
    writes.set_user_attr("worker", "h:1")
    writes.set_user_attr("config", {"d_model": 32, "n_layers": 1})
    writes.set_user_attr("note", None)
    set_trial_constraint(writes, 0.25)
    # pending: visible through the wrapper, not in storage
    assert writes.user_attrs["config"] == {"d_model": 32, "n_layers": 1} and writes.pending == 4
    assert writes.system_attrs["constraints"] == [0.25]
    assert "worker" not in _stored(storage, trial).user_attrs
    commits, statements = [], []
    sa.event.listen(storage.engine, "commit", lambda conn: commits.append(1))
    sa.event.listen(storage.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    writes.flush()
    assert len(commits) == 1, statements
    # one read of the trial, one upsert per attribute table
    assert len([s for s in statements if s.lstrip().upper().startswith("INSERT")]) == 2, statements
    stored = _stored(storage, trial)
    assert stored.user_attrs == {"worker": "h:1", "config": {"d_model": 32, "n_layers": 1}, "note": None}
    assert stored.system_attrs["constraints"] == [0.25] and stored.constraints == {"0": 0.25}
    assert writes.pending == 0 and writes.user_attrs["worker"] == "h:1"
    # an overwrite after a flush is an upsert, and an empty flush touches nothing
    writes.set_user_attr("worker", "h:2")
    writes.flush()
    commits.clear()
    writes.flush()
    assert commits == [] and _stored(storage, trial).user_attrs["worker"] == "h:2"
    with pytest.raises(ValueError, match="constraint already set"):
        set_trial_constraint(writes, 1.0)


def test_wrapper_passes_through_the_trial(storage_url):
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    writes = TrialWrites(trial)
    x = writes.suggest_float("x", 0.0, 1.0)
    assert writes.number == trial.number and writes.params == {"x": x} and writes.trial is trial
    assert trial_id(writes) == trial_id(trial)


def test_finished_trial_is_refused_and_attrs_stay_pending(storage_url):
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    writes = TrialWrites(trial)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    writes.set_user_attr("late", 1)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        writes.flush()
    assert writes.pending == 1 and "late" not in _stored(storage, trial).user_attrs


def test_storage_without_a_batch_write_gets_one_call_per_attr():
    storage = optuna.storages.InMemoryStorage()
    calls = []
    real = storage.set_trial_user_attr
    storage.set_trial_user_attr = lambda *a, **k: (calls.append(a), real(*a, **k))[1]  # type: ignore[method-assign]
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    writes = TrialWrites(trial)
    writes.set_user_attr("a", 1)
    writes.set_user_attr("b", [2])
    set_trial_constraint(writes, -0.5)
    writes.flush()
    assert len(calls) == 2
    stored = storage.get_trial(trial_id(trial))
    assert stored.user_attrs == {"a": 1, "b": [2]} and stored.constraints == {"0": -0.5}


def test_start_flush_writes_in_a_thread_and_a_failed_one_is_pending_again(storage_url):
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    writes = TrialWrites(trial)
    writes.set_user_attr("worker", "h:1")
    writes.start_flush()
    writes.set_user_attr("later", 2)  # set while the thread writes: stays pending
    writes.join_flush()
    assert _stored(storage, trial).user_attrs == {"worker": "h:1"} and writes.pending == 1
    assert writes.user_attrs == {"worker": "h:1", "later": 2}
    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # the thread's write will be refused
    writes.start_flush()
    writes.join_flush()
    assert writes.pending == 1 and writes.user_attrs["later"] == 2  # back to pending, not lost
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        writes.flush()
