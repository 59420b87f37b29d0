"""tuner.storage.studies: the one study builder (metric names, the stored spec, presets and the reference trial
enqueued once), loading by name, and heartbeat ages. Storage contract tests: each runs on SQLite and PostgreSQL."""

from __future__ import annotations

import optuna
import pytest

from tests.tuner.tiny import spec
from tuner.errors import SpecError, StorageError
from tuner.storage.connect import open_storage
from tuner.storage.studies import create_or_load_study, heartbeat_ages_s, load_study, study_names, study_spec
from tuner.storage.trial_attrs import is_reference

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_create_sets_names_spec_and_presets_once(storage_url):
    s = spec(enqueue_presets=["8gb"])
    storage = open_storage(storage_url)
    study = create_or_load_study(s, storage)
    assert study.metric_names == ["val_ppl", "peak_vram_gib"]
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert study_spec(study).to_dict() == s.to_dict()
    waiting = study.get_trials(states=[optuna.trial.TrialState.WAITING])
    assert len(waiting) == 1 and waiting[0].user_attrs["preset"] == "8gb"
    assert waiting[0].system_attrs["fixed_params"] == s.preset_params("8gb")  # what the trial will use
    # loading again (another worker) enqueues nothing more, also with a different n_trials
    again = create_or_load_study(spec(enqueue_presets=["8gb"], n_trials=99), open_storage(storage_url))
    assert again._study_id == study._study_id and len(again.get_trials()) == 1


def test_existing_study_with_other_definition_is_an_error(storage_url):
    storage = open_storage(storage_url)
    create_or_load_study(spec(), storage)
    with pytest.raises(SpecError, match="vram_ceiling_gib: study 'unit' already exists with a different definition"):
        create_or_load_study(spec(vram_ceiling_gib=6), storage)
    with pytest.raises(SpecError, match="already exists with directions"):
        create_or_load_study(spec(objectives=[{"metric": "val_ppl"}]), storage)


def test_load_study_uses_stored_spec_sampler_and_names_missing(storage_url):
    storage = open_storage(storage_url)
    create_or_load_study(spec(sampler={"name": "nsga2", "seed": 3, "population_size": 6}), storage)
    study = load_study("unit", storage)
    assert isinstance(study.sampler, optuna.samplers.NSGAIISampler)
    with pytest.raises(StorageError, match=r"study 'other' not found .*studies there: unit"):
        load_study("other", storage)


def test_the_baseline_reference_is_enqueued_once(storage_url):
    storage = open_storage(storage_url)
    first = create_or_load_study(spec(baseline="dense"), storage)
    create_or_load_study(spec(baseline="dense"), open_storage(storage_url))  # a second worker
    trials = first.get_trials()
    assert len(trials) == 1 and is_reference(trials[0]) and trials[0].params == {}
    assert trials[0].user_attrs["reference"] == "dense"


def test_study_names_and_a_study_made_outside_the_tuner(storage_url):
    storage = open_storage(storage_url)
    assert study_names(storage) == []
    create_or_load_study(spec(), storage)
    plain = optuna.create_study(storage=storage, study_name="plain")
    assert sorted(study_names(storage)) == ["plain", "unit"]
    assert study_spec(plain) is None  # no stored spec: not a tuner study
    assert isinstance(load_study("plain", storage).sampler, optuna.samplers.TPESampler)  # Optuna's default


@pytest.mark.filterwarnings("ignore:Heartbeat of storage", "ignore::optuna.exceptions.ExperimentalWarning")
def test_heartbeat_ages_by_the_database_clock(storage_url):
    storage = open_storage(storage_url, heartbeat_interval_s=1, grace_period_s=5)
    study = create_or_load_study(spec(), storage)
    assert heartbeat_ages_s(storage, study) == {}  # no trial has beaten yet
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    ages = heartbeat_ages_s(storage, study)
    assert list(ages) == [trial._trial_id] and 0 <= ages[trial._trial_id] < 5
