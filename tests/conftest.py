"""Shared fixtures. Triton runs in its interpreter on CPU; every test that needs Postgres gets its own database."""

from __future__ import annotations

import os

# Must be set before triton is imported anywhere: kernels run for real on CPU through the interpreter. On a machine
# with an NVIDIA GPU the compiled kernels run instead (the interpreter on CUDA tensors fails the GPU tests: seen on
# the H100); TRITON_INTERPRET set by the caller wins either way.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from testing.harness import scratch_pg_database


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database on the local server, dropped after the test. Yields its SQLAlchemy URL."""
    with scratch_pg_database("tuner_test") as url:
        yield url
