"""tuner.storage.write_buffer: a held trial's writes stay in its worker until a flush point (progress, heartbeat,
state change, worker stop), then go out in one transaction; reads through the storage see them at once; a finished
trial has every write; a worker SIGKILLed mid-trial leaves exactly the trial's last flushed writes. Each case runs
on a real Postgres database and on a SQLite file; a plain Optuna RDBStorage on the same database is the outside
reader (another process, `tuner status`, the dashboard)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from tests.tuner.tiny import REPO, trial_spec
from tuner.storage._optuna_compat import study_id, trial_id
from tuner.storage.connect import open_storage
from tuner.storage.workers import PROGRESS_ATTR, ProgressRecorder
from tuner.storage.write_buffer import TrialWriteBuffer, TrialWrites, buffer_of, stored_form

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(params=["postgres", "sqlite"])
def url(request, tmp_path):
    """A fresh database: a Postgres database of its own, or a SQLite file."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'held.db'}"
    return request.getfixturevalue("pg_url")


def _outside(url):
    """A plain Optuna reader of the same database (no cache layer, nothing held)."""
    return optuna.storages.RDBStorage(url)


def _commits(storage):
    """A list that gets one entry per transaction the storage's engine commits."""
    seen: list[int] = []
    sa.event.listen(storage.engine, "commit", lambda conn: seen.append(1))
    return seen


def _running_trial(storage, name="held"):
    study = optuna.create_study(storage=storage, study_name=name, directions=["minimize", "minimize"])
    trial = study.ask()
    storage.writes.hold(trial_id(trial))
    return study, trial


def test_held_writes_are_read_back_at_once_and_written_at_the_flush_in_one_transaction(url):
    storage = open_storage(url)
    study, trial = _running_trial(storage)
    tid = trial_id(trial)
    trial.set_user_attr("worker", "host:1")
    trial.set_user_attr("shape", (2, 3))  # read back as a list, as from the database
    storage.set_trial_system_attr(tid, "tuner:details", {"config": {"d_model": 32}})
    storage.set_trial_intermediate_value(tid, 128, 9.5)
    assert storage.writes.pending(tid) == 4
    outside = _outside(url).get_trial(tid)
    assert "worker" not in outside.user_attrs and outside.intermediate_values == {}
    # Every read through the storage sees the held writes (the objective's read-modify-write of tuner:details).
    assert storage.get_trial_user_attrs(tid) == {"worker": "host:1", "shape": [2, 3]}
    assert storage.get_trial_system_attrs(tid)["tuner:details"] == {"config": {"d_model": 32}}
    assert storage.get_trial(tid).intermediate_values == {128: 9.5}
    (listed,) = storage.get_all_trials(study_id(study), deepcopy=False)
    assert listed.user_attrs["worker"] == "host:1" and listed.intermediate_values == {128: 9.5}
    commits = _commits(storage)
    assert storage.writes.flush(tid) == 4
    assert len(commits) == 1
    outside = _outside(url).get_trial(tid)
    assert outside.user_attrs == {"worker": "host:1", "shape": [2, 3]}
    assert outside.system_attrs["tuner:details"] == {"config": {"d_model": 32}}
    assert outside.intermediate_values == {128: 9.5} and outside.state == TrialState.RUNNING
    assert storage.writes.flush(tid) == 0  # nothing left: no transaction
    assert len(commits) == 1


def test_a_finished_trial_has_every_write_recorded_with_its_state_in_one_transaction(url):
    storage = open_storage(url)
    _, trial = _running_trial(storage)
    tid = trial_id(trial)
    for i in range(30):
        trial.set_user_attr(f"attr_{i}", i)
    storage.set_trial_system_attr(tid, "constraints", [-0.5])
    for step in (64, 128, 256):
        storage.set_trial_intermediate_value(tid, step, 100.0 / step)
    commits = _commits(storage)
    assert storage.set_trial_state_values(tid, TrialState.COMPLETE, (12.5, 0.25))  # what study.tell ends with
    assert len(commits) == 1  # the 34 writes and the COMPLETE state together
    assert not storage.writes.holds(tid)
    done = _outside(url).get_trial(tid)
    assert done.state == TrialState.COMPLETE and done.values == [12.5, 0.25] and done.datetime_complete is not None
    assert done.user_attrs == {f"attr_{i}": i for i in range(30)}
    assert done.system_attrs["constraints"] == [-0.5]
    assert done.intermediate_values == {64: 100.0 / 64, 128: 100.0 / 128, 256: 100.0 / 256}


def test_a_pruned_trial_and_a_failed_one_keep_their_writes(url):
    storage = open_storage(url)
    study, pruned = _running_trial(storage)
    pruned.set_user_attr("end_reason", "learning_curve")
    study.tell(pruned, state=TrialState.PRUNED)
    failed = study.ask()
    storage.writes.hold(trial_id(failed))
    failed.set_user_attr("end_reason", "error")
    study.tell(failed, state=TrialState.FAIL)
    reader = _outside(url)
    assert reader.get_trial(trial_id(pruned)).user_attrs == {"end_reason": "learning_curve"}
    assert reader.get_trial(trial_id(failed)).user_attrs == {"end_reason": "error"}
    assert [reader.get_trial(trial_id(t)).state for t in (pruned, failed)] == [TrialState.PRUNED, TrialState.FAIL]


def test_a_trial_not_held_is_written_at_once(url):
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="through")
    trial = study.ask()
    trial.set_user_attr("worker", "host:2")
    assert _outside(url).get_trial(trial_id(trial)).user_attrs == {"worker": "host:2"}
    assert storage.writes.pending(trial_id(trial)) == 0


def test_each_stored_progress_report_and_each_heartbeat_is_a_flush_point(url):
    storage = open_storage(url)
    _, trial = _running_trial(storage)
    tid = trial_id(trial)
    trial.set_user_attr("worker", "host:3")
    ProgressRecorder(trial, None, every_s=3600)({"step": 1, "tokens": 128, "loss": 7.0})
    seen = _outside(url).get_trial(tid)
    assert seen.user_attrs == {"worker": "host:3"} and seen.system_attrs[PROGRESS_ATTR]["step"] == 1
    trial.set_user_attr("trial_wall_s", 1.5)
    storage.record_heartbeat(tid)
    assert _outside(url).get_trial(tid).user_attrs["trial_wall_s"] == 1.5
    assert storage.writes.pending(tid) == 0


def test_a_trial_failed_elsewhere_refuses_the_late_writes_and_lets_them_go(url):
    storage = open_storage(url)
    study, trial = _running_trial(storage)
    tid = trial_id(trial)
    trial.set_user_attr("late", True)
    _outside(url).set_trial_state_values(tid, TrialState.FAIL)  # another worker failed it as stale
    storage.record_heartbeat(tid)  # the heartbeat's flush fails, logged, never raised
    assert storage.writes.pending(tid) == 1
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.writes.flush(tid)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(tid, TrialState.COMPLETE, (1.0, 1.0))
    assert not storage.writes.holds(tid)
    assert _outside(url).get_trial(tid).user_attrs == {}


def test_the_worker_stop_flushes_what_is_still_held_and_never_raises(url, caplog):
    storage = open_storage(url)
    study, kept = _running_trial(storage)
    kept.set_user_attr("end_reason", "error")
    lost = study.ask()
    storage.writes.hold(trial_id(lost))
    lost.set_user_attr("late", True)
    _outside(url).set_trial_state_values(trial_id(lost), TrialState.FAIL)
    assert storage.writes.flush_all() == 1
    assert storage.writes.held_ids() == []
    assert _outside(url).get_trial(trial_id(kept)).user_attrs == {"end_reason": "error"}
    assert "1 dropped" in caplog.text


def test_a_value_that_is_not_json_is_refused_where_it_is_set(url):
    storage = open_storage(url)
    _, trial = _running_trial(storage)
    with pytest.raises(TypeError):
        trial.set_user_attr("bad", object())
    assert storage.writes.pending(trial_id(trial)) == 0


def test_sigkill_mid_trial_leaves_the_last_flushed_writes(url, tmp_path):
    """A worker killed outright loses only what it set since its last flush point."""
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="killed", directions=["minimize"])
    script = tmp_path / "victim.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time, optuna
            from tuner.storage._optuna_compat import study_id, trial_id
            from tuner.storage.connect import open_storage
            storage = open_storage(sys.argv[1])
            trial = optuna.load_study(study_name="killed", storage=storage).ask()
            storage.writes.hold(trial_id(trial))
            trial.set_user_attr("config", "flushed")
            storage.set_trial_intermediate_value(trial_id(trial), 1, 5.0)
            storage.writes.flush(trial_id(trial))
            trial.set_user_attr("result", "held")
            print("ready", flush=True)
            time.sleep(60)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    victim = subprocess.Popen([sys.executable, str(script), url], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert victim.stdout is not None and victim.stdout.readline().strip() == "ready"
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.wait(30)
    assert victim.returncode == -signal.SIGKILL
    (trial,) = _outside(url).get_all_trials(study_id(study))
    assert trial.state == TrialState.RUNNING  # the heartbeat fails it later; its retry starts from the flushed attrs
    assert trial.user_attrs == {"config": "flushed"} and trial.intermediate_values == {1: 5.0}


def test_a_worker_records_every_attr_of_its_trials(url, tmp_path):
    """The real worker (objective, recording, heartbeat) on held writes: each finished trial holds what the
    objective set, its curve as intermediate values, and nothing is left held."""
    from tuner.trial.worker import run_worker

    storage = open_storage(url)
    spec = trial_spec()
    assert run_worker(spec, storage=storage, seed=0, n_trials=2, cache_dir=tmp_path / "cache",
                      install_signal_handlers=False) == 0  # fmt: skip
    trials = optuna.load_study(study_name=spec.name, storage=_outside(url)).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    for t in trials:
        assert t.user_attrs["end_reason"] == "complete"
        assert {"worker", "device", "trial_wall_s", "gpu_busy_frac", "params_total"} <= set(t.user_attrs)
        assert {"config", "curve"} <= set(t.system_attrs["tuner:details"])
        assert t.constraints and t.intermediate_values
        assert t.system_attrs[PROGRESS_ATTR]["step"] >= 1
    assert storage.writes.held_ids() == []


def test_buffer_of_finds_the_held_writes_only_on_the_tuner_storage(tmp_path):
    assert isinstance(buffer_of(open_storage(f"sqlite:///{tmp_path / 'b.db'}")), TrialWriteBuffer)
    assert buffer_of(optuna.storages.InMemoryStorage()) is None


def test_trial_writes_apply_on_a_copy_and_stored_form_round_trips_json():
    frozen = optuna.trial.create_trial(value=1.0, user_attrs={"a": 1}, intermediate_values={1: 2.0})
    writes = TrialWrites(user_attrs={"b": [1]}, intermediate_values={2: 3.0})
    out = writes.apply_to(frozen)
    assert out.user_attrs == {"a": 1, "b": [1]} and out.intermediate_values == {1: 2.0, 2: 3.0}
    assert frozen.user_attrs == {"a": 1} and frozen.intermediate_values == {1: 2.0}
    assert stored_form({"t": (1, 2)}) == {"t": [1, 2]} and len(writes) == 2
