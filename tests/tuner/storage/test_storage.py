"""Storage: URL resolution and masking, engine options on a real Postgres, unreachable servers failing fast,
heartbeat + stale-trial retry wired, and the one study builder (metric names, stored spec, presets once)."""

from __future__ import annotations

import copy
import socket
import time

import optuna
import pytest

from tests.tuner.tiny import BASE
from tuner.errors import SpecError, StorageError
from tuner.storage.connect import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, open_storage
from tuner.storage.samplers import make_sampler
from tuner.storage.studies import create_or_load_study, load_study, study_spec
from tuner.storage.urls import mask_text, mask_url, resolve_storage_url
from tuner.study.loader import spec_from_dict

optuna.logging.set_verbosity(optuna.logging.WARNING)


def spec(**changes):
    d = copy.deepcopy(BASE)
    d.update(changes)
    return spec_from_dict(d, where="test.yaml")


# --- URLs -------------------------------------------------------------------------------------------------------


def test_resolution_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_storage_url("sqlite:///flag.db", {"TUNER_STORAGE": "postgresql://h/db"}) == "sqlite:///flag.db"
    assert resolve_storage_url(None, {"TUNER_STORAGE": "postgresql://h/db"}) == "postgresql://h/db"
    assert resolve_storage_url(None, {}) == f"sqlite:///{tmp_path / 'tuner.db'}"
    monkeypatch.setenv("TUNER_STORAGE", "postgresql://env/db")
    assert resolve_storage_url(None) == "postgresql://env/db"


@pytest.mark.parametrize(
    "url, masked",
    [
        ("postgresql+psycopg2://tuner:s3cr%40t@db:5432/tuner", "postgresql+psycopg2://tuner:***@db:5432/tuner"),
        ("postgresql://u:p@h/d", "postgresql://u:***@h/d"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        ("sqlite:////tmp/tuner.db", "sqlite:////tmp/tuner.db"),
        ("mysql://root:pw@[::1]:3306/x", "mysql://root:***@[::1]:3306/x"),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_mask_text_removes_password_anywhere():
    url = "postgresql://u:hunter2@h/d"
    assert "hunter2" not in mask_text(f"failed for {url}; password 'hunter2' rejected", url)
    # a one-letter password is masked as a token without garbling words that contain the letter
    assert mask_text("timeout expired; password x", "postgresql://u:x@h/d") == "timeout expired; password ***"


# --- connecting -------------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once we leave: nothing listens there


@pytest.mark.parametrize("host", ["127.0.0.1", "nohost.invalid"])
def test_unreachable_postgres_fails_fast_naming_host_and_port(host):
    port = _closed_port()
    url = f"postgresql+psycopg2://tuner:topsecret@{host}:{port}/tuner"
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
        open_storage(url)
    elapsed = time.monotonic() - t0
    msg = str(info.value)
    assert elapsed < 10.0, elapsed
    assert f"{host}:{port}" in msg and "topsecret" not in msg and "***" in msg, msg


def test_silent_server_fails_within_10s():
    """A port that accepts TCP but never answers (a hung server or proxy): libpq's connect_timeout bounds it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        url = f"postgresql+psycopg2://tuner:topsecret@127.0.0.1:{port}/tuner"
        t0 = time.monotonic()
        with pytest.raises(StorageError) as info:
            open_storage(url)
        elapsed = time.monotonic() - t0
    msg = str(info.value)
    assert elapsed < 10.0, elapsed
    assert f"127.0.0.1:{port}" in msg and "topsecret" not in msg, msg


def test_wrong_database_names_host_and_masks(pg_url):
    url = pg_url.rsplit("/", 1)[0].replace("postgres@", "postgres:pw123@") + "/no_such_db_xyz"
    with pytest.raises(StorageError) as info:
        open_storage(url)
    msg = str(info.value)
    assert "127.0.0.1:5432" in msg and "no_such_db_xyz" in msg and "pw123" not in msg, msg


def test_missing_sqlite_folder(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        open_storage(f"sqlite:///{tmp_path}/nope/tuner.db")


def test_postgres_engine_options_and_heartbeat(pg_url):
    storage = open_storage(pg_url)
    engine = storage.engine
    assert engine.pool._pre_ping is True and engine.pool._recycle == 300
    with engine.connect() as conn:  # the options reach libpq
        params = conn.connection.dbapi_connection.info.dsn_parameters
    assert params["keepalives"] == "1" and params["keepalives_idle"] == "30" and params["connect_timeout"] == "4"
    assert storage.heartbeat_interval == HEARTBEAT_INTERVAL_S and storage.grace_period == GRACE_PERIOD_S
    assert isinstance(storage.get_heartbeat_stale_trial_callback(), optuna.storages.RetryHeartbeatStaleTrialCallback)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage", "ignore::optuna.exceptions.ExperimentalWarning")
def test_stale_trial_is_requeued(storage_url):
    """A worker that stops beating: after the grace period its RUNNING trial fails and a WAITING copy appears."""
    storage = open_storage(storage_url, heartbeat_interval_s=1, grace_period_s=1)
    study = optuna.create_study(storage=storage, study_name="hb")  # plain study: only the storage matters here
    trial = study.ask()
    trial.suggest_int("x", 0, 3)
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.2)
    optuna.storages.fail_stale_trials(study)
    states = sorted(t.state.name for t in study.get_trials())
    assert states == ["FAIL", "WAITING"]


# --- studies (storage contract: the tests below run on SQLite and on PostgreSQL) --------------------------------


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


@pytest.mark.parametrize(
    "name, cls",
    [
        ("tpe", optuna.samplers.TPESampler),
        ("nsga2", optuna.samplers.NSGAIISampler),
        ("gp", optuna.samplers.GPSampler),
        ("random", optuna.samplers.RandomSampler),
    ],
)
def test_make_sampler(name, cls):
    assert isinstance(make_sampler(spec(sampler={"name": name, "seed": 1}), 1), cls)


def test_make_grid_sampler():
    d = copy.deepcopy(BASE)
    d["sampler"] = {"name": "grid"}
    d["search_space"] = {
        "ar_ssm_max_rank": {"type": "int", "low": 8, "high": 16, "step": 8},
        "htt_phase_encoding": {"type": "categorical", "choices": [True, False]},
    }
    loaded = spec_from_dict(d)
    sampler = make_sampler(loaded, loaded.sampler.seed)
    assert isinstance(sampler, optuna.samplers.GridSampler)
