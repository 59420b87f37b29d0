"""The per-study lock (tuner.storage.study_lock) on both backends: a second holder waits until the first releases;
a stop event ends the wait; on Postgres different studies do not block each other."""

from __future__ import annotations

import threading

import optuna

from tuner.storage.connect import open_storage
from tuner.storage.study_lock import StudyLock


def test_the_lock_excludes_a_second_holder_until_released(storage_url):
    storage, other = open_storage(storage_url), open_storage(storage_url)
    sid = optuna.create_study(storage=storage, study_name="locked")._study_id
    first, second = StudyLock(storage, sid), StudyLock(other, sid)
    assert first.acquire()
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    assert second.acquire(stop) is False  # waited, then the stop event ended the wait
    first.release()
    first.release()  # idempotent
    assert second.acquire(threading.Event())
    assert not first.acquire(_set_event())  # now held by `second`
    second.release()


def test_studies_lock_independently_on_postgres(pg_url):
    """On SQLite the lock is the file's (all its studies share it: a local file has few workers); on Postgres each
    study has its own advisory key."""
    storage_url = pg_url
    storage = open_storage(storage_url)
    a = optuna.create_study(storage=storage, study_name="a")._study_id
    b = optuna.create_study(storage=storage, study_name="b")._study_id
    la, lb = StudyLock(storage, a), StudyLock(open_storage(storage_url), b)
    assert la.acquire() and lb.acquire(_set_event())  # b's lock is free: taken on the first try
    la.release()
    lb.release()


def _set_event() -> threading.Event:
    e = threading.Event()
    e.set()
    return e
