"""Which storage errors are an outage and which are permanent (tuner.storage.failures), on real driver errors:
a read-only SQLite file and a missing Postgres database fail at once with one line; a refused connection and a
locked SQLite file are worth waiting for; an integrity error is neither."""

from __future__ import annotations

import socket
import sqlite3

import pytest
import sqlalchemy as sa
import sqlalchemy.exc

from tuner.storage.failures import is_connection_failure, permanent_error


def _error(engine: sa.engine.Engine, sql: str) -> BaseException:
    with pytest.raises(sqlalchemy.exc.DBAPIError) as info, engine.begin() as conn:
        conn.execute(sa.text(sql))
    return info.value


def test_a_read_only_sqlite_file_is_permanent(tmp_path):
    db = tmp_path / "t.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x int)").connection.commit()
    ro = sa.create_engine(f"sqlite:///file:{db}?mode=ro&uri=true")
    exc = _error(ro, "INSERT INTO t VALUES (1)")
    err = permanent_error(exc, f"sqlite:///{db}")
    assert err is not None and "read-only" in str(err) and "\n" not in str(err)
    assert not is_connection_failure(exc)


def test_a_locked_sqlite_file_is_worth_waiting_for(tmp_path):
    db = tmp_path / "t.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x int)")
    holder.execute("BEGIN IMMEDIATE")
    exc = _error(sa.create_engine(f"sqlite:///{db}", connect_args={"timeout": 0}), "INSERT INTO t VALUES (1)")
    holder.execute("ROLLBACK")
    assert "locked" in str(exc) and permanent_error(exc, "sqlite://") is None and is_connection_failure(exc)


def test_postgres_refused_is_an_outage_and_a_missing_database_is_not(pg_url):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(sqlalchemy.exc.OperationalError) as refused:
        sa.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/x").connect()
    assert is_connection_failure(refused.value) and permanent_error(refused.value, pg_url) is None
    missing = pg_url.rsplit("/", 1)[0] + "/no_such_database_here"
    with pytest.raises(sqlalchemy.exc.OperationalError) as info:
        sa.create_engine(missing).connect()
    err = permanent_error(info.value, missing)
    assert err is not None and "does not exist" in str(err) and not is_connection_failure(info.value)


def test_an_integrity_error_is_neither(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 't.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (k int primary key)"))
        conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    exc = _error(engine, "INSERT INTO t VALUES (1)")
    assert permanent_error(exc, "sqlite://") is None and not is_connection_failure(exc)
