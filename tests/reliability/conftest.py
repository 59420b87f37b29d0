"""Reliability suite fixtures: the local Postgres is up again after every test (some tests stop it on purpose),
whatever happened; a process-exit hook does the same if the run is interrupted."""

from __future__ import annotations

import atexit

import pytest

from testing.harness import CACHE_DIR, ensure_pg_running

atexit.register(ensure_pg_running)


@pytest.fixture(autouse=True)
def _postgres_back_up():
    yield
    ensure_pg_running()


@pytest.fixture(scope="session", autouse=True)
def _data_cache():
    """Tokenize the tiny studies' text once for every worker process of the session (they share CACHE_DIR)."""
    from model.data import DataSource, prepare_data

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    prepare_data(DataSource(kind="stdlib", max_bytes=262144), 512, CACHE_DIR)
    yield
