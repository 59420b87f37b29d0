"""testing.pg_servers: which server a database URL names, and the outage server the outage tests stop instead of the
shared one (real clusters: pg_createcluster, pg_ctlcluster)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from testing.harness import fresh_pg_database, pg_ctl, pg_ready
from testing.pg_servers import MAIN, OUTAGE, ensure_outage_server, server_of

pytestmark = pytest.mark.xdist_group("pg_outage")  # it stops the outage server


def test_a_url_names_its_server_by_port_and_an_unknown_port_is_refused():
    assert server_of(MAIN.admin_url.rsplit("/", 1)[0] + "/some_db") is MAIN
    assert server_of(OUTAGE.admin_url) is OUTAGE and OUTAGE.port != MAIN.port
    with pytest.raises(ValueError, match="port 1 is none of the test servers"):
        server_of("postgresql+psycopg2://postgres@127.0.0.1:1/x")


def test_stopping_the_outage_server_leaves_the_shared_one_serving(pg_url):
    ensure_outage_server()
    with fresh_pg_database(OUTAGE) as url:
        assert server_of(url) is OUTAGE and pg_ready(url)
        pg_ctl("stop", url)
        try:
            assert not pg_ready(url)
            shared = sa.create_engine(pg_url)  # a test beside this one, on the shared server, carries on
            with shared.connect() as conn:
                assert conn.execute(sa.text("SELECT 1")).scalar() == 1
            shared.dispose()
        finally:
            pg_ctl("start", url)
        OUTAGE.ensure_running()
        assert pg_ready(url) and pg_ready()


def test_the_outage_server_is_held_by_one_test_at_a_time():
    """While one test holds the outage server, another process cannot (it would wait): the lock is what keeps outage
    tests apart when pytest-xdist's grouping is not applied."""
    import subprocess
    import sys

    from testing.pg_servers import _HOLD_LOCK, holding_outage_server

    probe = (
        "import fcntl, sys\n"
        f"f = open({str(_HOLD_LOCK)!r}, 'w')\n"
        "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)\n"
    )
    with holding_outage_server() as server:
        assert server is OUTAGE and server.ready()
        assert subprocess.run([sys.executable, "-c", probe], timeout=60).returncode == 3  # held: it would wait
    assert subprocess.run([sys.executable, "-c", probe], timeout=60).returncode == 0  # released
