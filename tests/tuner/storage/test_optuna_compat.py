"""The fence around Optuna's private names (tuner.storage._optuna_compat). These tests fail when an Optuna release
changes what the fence relies on, instead of letting the retry layer break silently: every RDBStorage method the
resilient storage wraps or overrides must still exist with the same parameters, and must be routed through the
retry logic."""

from __future__ import annotations

import inspect

import optuna
import pytest
from optuna.storages import RDBStorage

from tuner.storage._optuna_compat import (
    BACKEND_PRIVATE_METHODS,
    RETRIED_METHODS,
    heartbeat_ages_s,
    storage_backend,
    study_id,
    trial_id,
)
from tuner.storage.connect import open_storage
from tuner.storage.resilient import ResilientStorage

# Parameter names (after self) of the RDBStorage methods the resilient storage wraps or overrides, as in Optuna 5.0.
# A difference means the wrapper would forward the wrong arguments: read the new Optuna code, then update both.
TESTED_SIGNATURES = {
    "create_new_study": ("directions", "study_name"),
    "delete_study": ("study_id",),
    "set_study_user_attr": ("study_id", "key", "value"),
    "set_study_system_attr": ("study_id", "key", "value"),
    "get_study_id_from_name": ("study_name",),
    "get_study_name_from_id": ("study_id",),
    "get_study_directions": ("study_id",),
    "get_study_user_attrs": ("study_id",),
    "get_study_system_attrs": ("study_id",),
    "get_trial_user_attrs": ("trial_id",),
    "get_trial_system_attrs": ("trial_id",),
    "get_all_studies": (),
    "create_new_trial": ("study_id", "template_trial"),
    "_create_new_trial": ("study_id", "template_trial"),
    "set_trial_param": ("trial_id", "param_name", "param_value_internal", "distribution"),
    "_set_trial_param": ("trial_id", "param_name", "param_value_internal", "distribution", "previous_distribution"),
    "get_trial_param": ("trial_id", "param_name"),
    "set_trial_state_values": ("trial_id", "state", "values"),
    "set_trial_intermediate_value": ("trial_id", "step", "intermediate_value"),
    "set_trial_user_attr": ("trial_id", "key", "value"),
    "set_trial_system_attr": ("trial_id", "key", "value"),
    "get_trial_id_from_study_id_trial_number": ("study_id", "trial_number"),
    "get_trial_number_from_id": ("trial_id",),
    "get_trial": ("trial_id",),
    "get_all_trials": ("study_id", "deepcopy", "states"),
    "_get_trials": ("study_id", "states", "included_trial_ids", "trial_id_greater_than"),
    "get_n_trials": ("study_id", "state"),
    "get_best_trial": ("study_id",),
    "_get_best_trial_id": ("study_id", "direction"),
    "get_trial_params": ("trial_id",),
    "_get_stale_trial_ids": ("study_id",),
    "record_heartbeat": ("trial_id",),
    "check_trial_is_updatable": ("trial_id", "trial_state"),
    # inside the one transaction of a held trial's writes (write_trial_writes)
    "_set_trial_attr_without_commit": ("session", "model_cls", "trial_id", "key", "value"),
    "_set_trial_intermediate_value_without_commit": ("session", "trial_id", "step", "intermediate_value"),
    "_set_trial_value_without_commit": ("session", "trial", "objective", "value"),
}


def test_the_pinned_minor_is_the_tested_one():
    assert optuna.__version__.startswith("5.0."), "update TESTED_SIGNATURES and pyproject's pin together"


@pytest.mark.parametrize("name", sorted(TESTED_SIGNATURES))
def test_wrapped_rdbstorage_methods_keep_their_parameters(name):
    assert hasattr(RDBStorage, name), f"RDBStorage.{name} is gone: the retry layer would not cover it"
    params = tuple(p for p in inspect.signature(getattr(RDBStorage, name)).parameters if p != "self")
    assert params == TESTED_SIGNATURES[name]


def test_every_retried_method_is_routed_through_the_retry_logic(tmp_path, monkeypatch):
    """Each forwarded BaseStorage method goes through the retry loop: its first call fails as an outage would, the
    second returns; the wrapper must return the second answer. No abstract method is left unimplemented."""
    import sqlalchemy.exc

    assert set(RETRIED_METHODS) | set(BACKEND_PRIVATE_METHODS) <= set(TESTED_SIGNATURES)
    assert not ResilientStorage.__abstractmethods__
    abstract = {
        n
        for n in dir(optuna.storages.BaseStorage)
        if getattr(getattr(optuna.storages.BaseStorage, n), "__isabstractmethod__", False)
    }
    assert abstract <= set(RETRIED_METHODS)
    storage = open_storage(f"sqlite:///{tmp_path / 'tuner.db'}")
    monkeypatch.setattr("tuner.storage.resilient.BACKOFF_FIRST_S", 0.01)

    class Flaky:
        calls: list[str] = []

        def __getattr__(self, name):
            def method(*args, **kwargs):
                self.calls.append(name)
                if self.calls.count(name) == 1:
                    raise sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))
                return ("answer", name)

            return method

    storage._inner = Flaky()
    for name in RETRIED_METHODS:
        params = [p for p in inspect.signature(getattr(ResilientStorage, name)).parameters.values() if p.name != "self"]
        args = [None for p in params if p.default is inspect.Parameter.empty]
        result = getattr(storage, name)(*args)
        assert Flaky.calls.count(name) == 2, name  # failed once, retried once
        returns_none = inspect.signature(getattr(ResilientStorage, name)).return_annotation in (None, "None")
        assert result == (None if returns_none else ("answer", name)), name


@pytest.mark.parametrize("name", BACKEND_PRIVATE_METHODS)
def test_private_methods_the_cache_and_heartbeat_call_still_exist(name):
    assert callable(getattr(RDBStorage, name))


def test_private_accessors_on_a_real_study(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'tuner.db'}")
    study = optuna.create_study(storage=storage, study_name="fence")
    trial = study.ask()
    assert storage_backend(study) is storage
    assert storage.get_study_id_from_name("fence") == study_id(study)
    assert storage.get_trial(trial_id(trial)).number == trial.number
    storage.record_heartbeat(trial_id(trial))
    ages = heartbeat_ages_s(storage.engine, study_id_=study_id(study))
    assert set(ages) == {trial_id(trial)} and 0.0 <= ages[trial_id(trial)] < 60.0
