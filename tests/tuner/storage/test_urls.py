"""tuner.storage.urls: passwords never printed (an unescaped '@' included), unknown dialects named with the fix."""

from __future__ import annotations

import pytest

from tuner.errors import StorageError
from tuner.storage.urls import host_port, mask_text, mask_url


@pytest.mark.parametrize(
    "url, masked",
    [
        ("postgresql+psycopg2://u:pw@127.0.0.1:5432/db", "postgresql+psycopg2://u:***@127.0.0.1:5432/db"),
        # issue 17 item 11: the first '@' ended the password, printing `***@secret@127.0.0.1`
        ("postgresql+psycopg2://u:pa@secret@127.0.0.1/db", "postgresql+psycopg2://u:***@127.0.0.1/db"),
        ("postgresql://u:a/b:c@host/db?sslmode=require", "postgresql://u:***@host/db?sslmode=require"),
        ("postgresql://u@host/db", "postgresql://u@host/db"),
        ("sqlite:///tuner.db", "sqlite:///tuner.db"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_mask_text_removes_every_part_of_a_password_with_at():
    url = "postgresql+psycopg2://u:pa@secret@127.0.0.1/db"
    text = mask_text(f"could not translate host name 'secret@127.0.0.1' for {url}", url)
    assert "secret" not in text and "pa@" not in text


def test_a_password_with_an_unescaped_at_is_refused_masked():
    with pytest.raises(StorageError) as info:
        host_port("postgresql+psycopg2://u:pa@secret@127.0.0.1/db")
    assert "secret" not in str(info.value) and "%40" in str(info.value)


@pytest.mark.parametrize("url", ["postgres://u:secret@127.0.0.1:5432/db", "postgres+psycopg2://u@h/db"])
def test_postgres_dialect_names_the_fix(url):
    with pytest.raises(StorageError) as info:
        host_port(url)
    assert "use postgresql+psycopg2://" in str(info.value) and "secret" not in str(info.value)


def test_unknown_dialect_and_good_urls():
    with pytest.raises(StorageError, match="unknown database dialect 'nosuchdb'"):
        host_port("nosuchdb://h/db")
    assert host_port("postgresql+psycopg2://u:p%40s@127.0.0.1/db") == ("127.0.0.1", 5432, "postgresql")
    assert host_port("sqlite:///x.db") == (None, None, "sqlite")
