"""Storage: URL resolution and masking, engine options on a real Postgres, unreachable servers failing fast,
heartbeat + stale-trial retry wired. (Studies: test_studies.py; samplers: test_samplers.py.)"""

from __future__ import annotations

import socket
import time

import optuna
import pytest

from tuner.errors import StorageError
from tuner.storage.connect import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, open_storage
from tuner.storage.urls import mask_text, mask_url, resolve_storage_url

optuna.logging.set_verbosity(optuna.logging.WARNING)


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
