"""Opening a storage (tuner.storage.connect.open_storage) when the database is down: a command run by hand fails
within seconds with one line (exit 2); a worker (`wait_s`) waits for the database and opens once it answers, gives
up after its wait with StorageUnavailable (exit 75, not a user error), and a stop signal ends the wait at once
(exit 143). Postgres is reached through a TCP relay the test cuts, so the shared server is never stopped here."""

from __future__ import annotations

import signal
import threading
import time

import optuna
import pytest

from tests.tuner.storage.test_resilient import relayed  # noqa: F401 - the fixture
from tuner.errors import StorageError, StorageInterrupted, StorageUnavailable
from tuner.storage.connect import open_storage
from tuner.storage.resilient import ResilientStorage, StopSignal


def test_by_hand_an_unreachable_database_fails_within_seconds(relayed):  # noqa: F811
    relay, url = relayed
    relay.cut()
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=r"cannot connect to 127\.0\.0\.1:\d+") as info:
        open_storage(url)
    assert time.monotonic() - t0 < 10 and info.value.exit_code == 2
    assert not isinstance(info.value, StorageUnavailable)


def test_a_worker_waits_for_the_database_and_opens_once_it_answers(relayed):  # noqa: F811
    relay, url = relayed
    relay.cut()
    threading.Timer(2.0, relay.restore).start()
    t0 = time.monotonic()
    storage = open_storage(url, wait_s=60)
    assert isinstance(storage, ResilientStorage) and 1.5 < time.monotonic() - t0 < 20
    assert storage.get_all_studies() == []


def test_the_wait_is_bounded_and_its_end_is_not_a_user_error(relayed):  # noqa: F811
    relay, url = relayed
    relay.cut()
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable, match="still unreachable after waiting 2 s") as info:
        open_storage(url, wait_s=2)
    assert 1.5 < time.monotonic() - t0 < 15 and info.value.exit_code == 75


def test_a_signal_ends_the_wait(relayed):  # noqa: F811
    relay, url = relayed
    relay.cut()
    stop = StopSignal()
    threading.Timer(1.0, stop.set_by, args=(signal.SIGTERM,)).start()
    t0 = time.monotonic()
    with pytest.raises(StorageInterrupted) as info:
        open_storage(url, wait_s=60, abort=stop)
    assert time.monotonic() - t0 < 8 and info.value.exit_code == 143


def test_a_signal_ends_a_running_storage_call_waiting_out_an_outage(relayed):  # noqa: F811
    relay, url = relayed
    stop = StopSignal()
    storage = open_storage(url, abort=stop)
    relay.cut()
    threading.Timer(1.5, stop.set_by, args=(signal.SIGINT,)).start()
    t0 = time.monotonic()
    with pytest.raises(StorageInterrupted, match="SIGINT received while storage") as info:
        storage.get_all_studies()
    assert time.monotonic() - t0 < 8 and info.value.exit_code == 130


def test_a_read_only_sqlite_file_fails_its_first_write_at_once(tmp_path):
    import sqlite3

    db = tmp_path / "t.db"
    open_storage(f"sqlite:///{db}").create_new_study([optuna.study.StudyDirection.MINIMIZE], "made")  # the tables exist
    sqlite3.connect(db).close()
    storage = open_storage(f"sqlite:///file:{db}?mode=ro&uri=true")
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="read-only; make it writable"):
        storage.set_study_user_attr(storage.get_study_id_from_name("made"), "k", 1)
    assert time.monotonic() - t0 < 5
