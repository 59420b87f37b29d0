"""run_worker's wiring (tuner.trial.worker) without training: the study is created from the spec, the caller's
sampler seed is used and recorded, a spent budget starts no trial child, and a study made outside tuner is refused."""

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
