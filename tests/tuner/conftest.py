"""Fixtures shared by the tuner tests: a storage URL for each supported backend, and the tiny study (as a dict to
change, or loaded)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.tuner.tiny import BASE, spec


@pytest.fixture(params=["sqlite", "postgres"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One storage URL per backend the tuner supports: the embedded SQLite file (the default) and PostgreSQL (a
    fresh database of the local server). Storage contract tests take this fixture and run on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tuner.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def tiny_spec_dict() -> dict[str, Any]:
    """A fresh copy of the tiny study (tests.tuner.tiny.BASE) to change freely."""
    return copy.deepcopy(BASE)


@pytest.fixture
def tiny_spec() -> Any:
    """The tiny study loaded (a StudySpec; tests.tuner.tiny.spec() for one with changes)."""
    return spec()
