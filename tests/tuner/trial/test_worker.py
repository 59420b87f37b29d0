"""run_worker's wiring (tuner.trial.worker) without training: the study is created from the spec, the caller's
sampler seed is used and recorded, a spent budget starts no trial child, and a study made outside tuner is refused;
and, training for real on CPU, what a worker does around its trials (a warm child, a dying child, a --stop-after
window)."""

from __future__ import annotations

import optuna
import pytest

from tests.tuner.tiny import BASE
from tuner.errors import StorageError
from tuner.storage.connect import open_storage
from tuner.storage.samplers import worker_seed
from tuner.study.loader import spec_from_dict
from tuner.trial.worker import _in_chain, default_worker_id, run_worker, spec_of_study


def test_a_spent_budget_creates_the_study_records_the_seed_and_starts_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    spec = spec_from_dict(BASE, check_paths=False)
    seed = worker_seed(spec.sampler.seed, "host:1")
    code = run_worker(
        spec, storage=open_storage(url), seed=seed, worker_id="host:1", n_trials=0, install_signal_handlers=False
    )
    assert code == 0
    study = optuna.load_study(study_name=spec.name, storage=url)
    storage = open_storage(url)
    stored = storage.get_study_system_attrs(storage.get_study_id_from_name(spec.name))
    assert stored["tuner:sampler_seed:host:1"] == seed != spec.sampler.seed
    assert study.trials == []  # the budget was spent before any trial: no child started, nothing asked


def test_default_worker_id_names_host_pid_and_gpu():
    host, pid = default_worker_id(None).split(":")
    assert pid.isdigit() and host
    assert default_worker_id(3).endswith(":gpu3")


def test_a_study_made_outside_tuner_has_no_spec(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'tuner.db'}")
    study = optuna.create_study(storage=storage, study_name="plain")
    with pytest.raises(StorageError, match="has no stored spec"):
        spec_of_study(study)


def test_in_chain_finds_the_cause():
    try:
        try:
            raise KeyError("root")
        except KeyError as e:
            raise RuntimeError("wrapper") from e
    except RuntimeError as outer:
        found = _in_chain(outer, KeyError)
    assert isinstance(found, KeyError) and _in_chain(ValueError(), KeyError) is None


@pytest.mark.slow
def test_data_gone_mid_study_is_an_environment_error_that_spends_no_budget(tmp_path):
    """The data folder passes the check before the first trial, then disappears (removed when the trial starts): the
    real trial child fails to read it, the trial ends `environment_error` and is re-queued with the same params, and
    the worker stops with one line (exit 2 through the CLI); the study's counted trials stay 0."""
    import copy
    import shutil

    from tuner.errors import WorkerEnvironmentError
    from tuner.trial.budget import counted_trials
    from tuner.trial.worker import WorkerHooks

    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 2000)
    d = copy.deepcopy(BASE)
    d["data"] = {"source": "files", "path": str(text)}
    spec = spec_from_dict(d, check_paths=False)
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    hooks = WorkerHooks(on_trial_start=lambda number, params: shutil.rmtree(text))
    with pytest.raises(WorkerEnvironmentError, match=r"data.path: .* re-queued and does not count") as info:
        run_worker(
            spec,
            storage=open_storage(url),
            seed=0,
            worker_id="host:1",
            cache_dir=tmp_path / "cache",
            hooks=hooks,
            install_signal_handlers=False,
        )
    assert "\n" not in str(info.value)
    study = optuna.load_study(study_name=spec.name, storage=url)
    failed, retry = study.trials
    assert failed.state.name == "FAIL" and failed.user_attrs["end_reason"] == "environment_error"
    assert retry.state.name == "WAITING" and retry.params == failed.params
    assert retry.system_attrs["retry_history"] == [failed.number]
    assert counted_trials(study) == 0


def _lead_to_training_s(phases: dict[str, float]) -> float:
    """Seconds of a trial's wall time before its first training step (the phases that precede `train`)."""
    return sum(phases.get(k, 0.0) for k in ("sample", "wait_child", "estimate", "data", "build"))


@pytest.mark.slow
def test_a_worker_keeps_its_child_warm_and_records_where_each_trials_time_went(tmp_path):
    """Real worker, real child, two trials on CPU. The child was started (torch, the model, the data opened) while
    the worker opened the study, so the first trial's data was already open; the second trial found everything
    warm and started training sooner than the first. Every trial's phases add up to its wall time and
    gpu_busy_frac is their train + eval share (measured timestamps, nothing mocked)."""
    from tests.tuner.tiny import trial_spec

    spec = trial_spec()
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    code = run_worker(
        spec,
        storage=open_storage(url),
        seed=0,
        worker_id="host:1",
        n_trials=2,
        cache_dir=tmp_path / "cache",
        install_signal_handlers=False,
    )
    assert code == 0
    first, second = optuna.load_study(study_name=spec.name, storage=url).trials
    for t in (first, second):
        assert t.state.name == "COMPLETE" and t.user_attrs["end_reason"] == "complete", t.user_attrs
        phases, frac = t.user_attrs["phase_s"], t.user_attrs["gpu_busy_frac"]
        names = ("sample", "wait_child", "estimate", "data", "build", "train", "eval", "handoff", "report")
        assert set(phases) == set(names)
        assert all(v >= 0.0 for v in phases.values()) and phases["train"] > 0 and phases["eval"] > 0
        wall = (t.datetime_complete - t.datetime_start).total_seconds()
        assert sum(phases.values()) == pytest.approx(wall, abs=0.5)  # up to Optuna's tell after the record
        assert 0.0 < frac <= 1.0
        # phase_s is rounded to the ms (gpu_busy_frac is not): up to 0.5 ms off per phase, plus frac's 4 digits
        tol = frac * 0.0005 * len(phases) / sum(phases.values()) + 1e-4
        assert frac == pytest.approx((phases["train"] + phases["eval"]) / sum(phases.values()), abs=tol)
    # prestarted at the worker's start with the study's data: the first trial's request found it open
    assert first.user_attrs["phase_s"]["data"] < 0.05, first.user_attrs["phase_s"]
    assert second.user_attrs["phase_s"]["wait_child"] < 0.05 and second.user_attrs["phase_s"]["data"] < 0.05
    assert _lead_to_training_s(second.user_attrs["phase_s"]) < _lead_to_training_s(first.user_attrs["phase_s"])
    assert "idle_before_s" not in first.user_attrs and second.user_attrs["idle_before_s"] >= 0.0


@pytest.mark.slow
def test_a_warm_child_that_dies_mid_trial_fails_that_trial_as_before_and_a_fresh_one_runs_the_next(tmp_path):
    """The warm child is killed (SIGKILL) during trial 0: that trial ends FAIL `error` naming the signal, with its
    phases and a busy fraction in [0, 1]; the next trial runs on a fresh child and completes."""
    import multiprocessing
    import os
    import signal

    from tests.tuner.tiny import trial_spec
    from tuner.trial.faults import FaultInjection
    from tuner.trial.worker import WorkerHooks

    killed: list[int] = []

    def kill_the_child(msg: dict) -> None:
        if msg["trial"] == 0 and not killed:
            child = next(p for p in multiprocessing.active_children() if p.name.startswith("tuner-trial-child"))
            os.kill(child.pid, signal.SIGKILL)
            killed.append(child.pid)

    spec = trial_spec()
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    run_worker(
        spec,
        storage=open_storage(url),
        seed=0,
        worker_id="host:1",
        n_trials=2,
        cache_dir=tmp_path / "cache",
        hooks=WorkerHooks(on_progress=kill_the_child),
        fault=FaultInjection("slow", at_step=1, sleep_s=0.3, trials=(0,)),  # progress is sent before it ends
        install_signal_handlers=False,
    )
    died, after = optuna.load_study(study_name=spec.name, storage=url).trials
    assert killed
    assert died.state.name == "FAIL" and died.user_attrs["end_reason"] == "error"
    assert died.user_attrs["error_summary"] == "trial child process died (killed by signal SIGKILL)"
    assert died.user_attrs["child_replaced"] is True and 0.0 <= died.user_attrs["gpu_busy_frac"] <= 1.0
    assert died.user_attrs["phase_s"]["train"] > 0  # the run up to the kill counts as training
    assert after.state.name == "COMPLETE" and after.user_attrs["end_reason"] == "complete"
    assert 0.0 < after.user_attrs["gpu_busy_frac"] <= 1.0


def test_a_compile_graphs_study_on_a_cpu_worker_is_refused_before_any_trial(tmp_path):
    """The worker waits for its (real, CPU) trial child, sees the device and refuses the CUDA-graph step in one line:
    no trial is asked, so none trains and the budget is untouched."""
    from tuner.errors import WorkerEnvironmentError

    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    spec = spec_from_dict({**BASE, "training": {"step": "compile_graphs"}}, check_paths=False)
    with pytest.raises(WorkerEnvironmentError) as info:
        run_worker(
            spec,
            storage=open_storage(url),
            seed=0,
            worker_id="host:1",
            cache_dir=tmp_path / "cache",
            install_signal_handlers=False,
        )
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("study unit: training.step compile_graphs replays CUDA graphs"), msg
    assert optuna.load_study(study_name=spec.name, storage=url).trials == []


@pytest.mark.slow
def test_a_window_that_ends_during_a_trial_lets_it_finish_and_takes_no_other(tmp_path, caplog):
    """--stop-after's deadline passes while trial 0 is RUNNING (its start hook waits past it, before any training):
    the trial still trains to its end and is recorded COMPLETE (not interrupted, no re-queued copy), the worker
    takes no second trial of its budget of 3, exits 0 with one line, and records the exit reason stop_after."""
    import datetime
    import time

    from tuner.storage.workers import worker_exits

    window_s = 3.0  # the worker reaches its first trial in about 0.6 s here: ample room, still a short test
    deadline = time.monotonic() + window_s
    passed_at: list[datetime.datetime] = []

    def wait_past_the_deadline(number: int, params: dict) -> None:
        assert time.monotonic() < deadline, "the worker reached its first trial after the window: machine too slow"
        time.sleep(deadline - time.monotonic() + 0.05)
        passed_at.append(datetime.datetime.now())

    code, spec, url, storage = _windowed_worker(tmp_path, caplog, deadline, wait_past_the_deadline, n_trials=3)
    assert code == 0 and len(passed_at) == 1  # one trial started: none after the deadline
    study = optuna.load_study(study_name=spec.name, storage=url)
    (trial,) = study.trials  # no second trial, no WAITING retry
    assert trial.state.name == "COMPLETE" and trial.user_attrs["end_reason"] == "complete", trial.user_attrs
    assert trial.user_attrs["phase_s"]["train"] > 0 and trial.datetime_complete > passed_at[0]  # trained after it
    assert "retry_history" not in trial.system_attrs
    assert worker_exits(storage, study)["host:1"]["reason"] == "stop_after"
    lines = [r.getMessage() for r in caplog.records if "--stop-after" in r.getMessage()]
    assert lines == ["worker host:1: --stop-after reached; 1 trial(s) this worker, study holds 1 of 3"]


def test_a_window_already_over_takes_no_trial(tmp_path, caplog):
    """A worker started after its deadline (a late start) takes no trial, exits 0 with its one line and records
    stop_after; the study's budget is untouched."""
    import time

    from tuner.storage.workers import worker_exits

    started: list[int] = []
    on_start = lambda number, params: started.append(number)
    code, spec, url, storage = _windowed_worker(tmp_path, caplog, time.monotonic() - 1.0, on_start)
    assert code == 0 and started == []
    study = optuna.load_study(study_name=spec.name, storage=url)
    assert study.trials == []
    assert worker_exits(storage, study)["host:1"]["reason"] == "stop_after"
    assert [r.getMessage() for r in caplog.records if "--stop-after" in r.getMessage()] == [
        "worker host:1: --stop-after reached; 0 trial(s) this worker, study holds 0 of 4"
    ]


def _windowed_worker(tmp_path, caplog, deadline, on_trial_start, n_trials=None):
    """run_worker on the tiny spec in a fresh SQLite file with a --stop-after `deadline` (time.monotonic()), its
    WARNING lines captured; returns (exit code, spec, url, storage)."""
    from tests.tuner.tiny import trial_spec
    from tuner.trial.worker import WorkerHooks

    spec = trial_spec()
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    storage = open_storage(url)
    with caplog.at_level("WARNING", logger="tuner.trial.worker"):
        code = run_worker(
            spec,
            storage=storage,
            seed=0,
            worker_id="host:1",
            n_trials=n_trials,
            cache_dir=tmp_path / "cache",
            hooks=WorkerHooks(on_trial_start=on_trial_start),
            install_signal_handlers=False,
            deadline=deadline,
        )
    return code, spec, url, storage
