"""Reliability suite fixtures: the shared Postgres is up again after every test, whatever happened; a process-exit
hook starts every test server (the outage tests stop their own, testing.pg_servers.OUTAGE) if the run is interrupted.
The per-test net leaves the outage server alone: with the suite in parallel an outage test may be beside this one."""

from __future__ import annotations

import atexit

import pytest

from testing.harness import CACHE_DIR, ensure_pg_running
from testing.pg_servers import ensure_all_running

atexit.register(ensure_all_running)


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
