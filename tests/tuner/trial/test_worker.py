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
