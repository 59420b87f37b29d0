"""Shared fixtures. Triton runs in its interpreter on CPU; every test that needs Postgres gets its own database."""

from __future__ import annotations

import os

# Must be set before triton is imported anywhere: kernels run for real on CPU through the interpreter. On a machine
# with an NVIDIA GPU the compiled kernels run instead (the interpreter on CUDA tensors fails the GPU tests: seen on
# the H100); TRITON_INTERPRET set by the caller wins either way.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import uuid

import pytest

PG_ADMIN_URL = os.environ.get("TUNER_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database on the local server, dropped after the test. Yields its SQLAlchemy URL."""
    import sqlalchemy as sa

    name = f"tuner_test_{uuid.uuid4().hex[:12]}"
    # pre-ping: reliability tests restart the server, and a pooled connection from before must not break teardown.
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
