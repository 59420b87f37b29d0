"""The local PostgreSQL servers the tests talk to: the shared one (cluster `main`, port 5432) and a second cluster that
only the outage tests use, so stopping a server for an outage never cuts off tests running beside them (the suite runs
in parallel: pytest-xdist). Each server is a Debian cluster controlled with pg_ctlcluster; which one a test means is
read from its database URL's port, so a scenario that stops "its" server cannot stop another test's.

The outage cluster is created on first use (`pg_createcluster`, trust auth on localhost, as the shared server has;
about a second) under a file lock, since several test processes may ask at once, and left in place for later runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

MAIN_ADMIN_URL = os.environ.get("TUNER_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
OUTAGE_PORT = int(os.environ.get("TUNER_TEST_OUTAGE_PORT", "5433"))
OUTAGE_CLUSTER = "tuner_outage"
_CREATE_LOCK = Path(tempfile.gettempdir()) / "tuner_test_outage_cluster.lock"
_HOLD_LOCK = Path(tempfile.gettempdir()) / "tuner_test_outage_server_held.lock"


def pg_version() -> str:
    return sorted(os.listdir("/etc/postgresql"))[0]


def wait_for(pred: Callable[[], Any], timeout: float, poll: float = 0.2, what: str = "condition") -> Any:
    """Poll `pred` every `poll` s until it returns a truthy value (returned); TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    raise TimeoutError(f"{what} not reached within {timeout:.0f} s")


@dataclass(frozen=True)
class PgServer:
    """One local cluster: its name (pg_ctlcluster's) and the port its admin URL names."""

    cluster: str
    admin_url: str

    @property
    def port(self) -> int:
        return int(make_url(self.admin_url).port or 5432)

    def exists(self) -> bool:
        return Path(f"/etc/postgresql/{pg_version()}/{self.cluster}").is_dir()

    def ready(self) -> bool:
        return subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-q"]).returncode == 0

    def ctl(self, action: str) -> None:
        """Stop or start the server. Starting one that is already running is not an error: a safety net
        (tests/reliability/conftest.py) may have started it again during a deliberate outage."""
        r = subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", pg_version(), self.cluster, action],
            capture_output=True,
            timeout=60,
        )
        if r.returncode != 0 and not (action == "start" and b"already running" in r.stdout + r.stderr):
            raise subprocess.CalledProcessError(r.returncode, r.args, r.stdout, r.stderr)

    def ensure_running(self) -> None:
        """Start the server if it exists and is down, and wait until it accepts connections."""
        if not self.exists() or self.ready():
            return
        with contextlib.suppress(subprocess.CalledProcessError):
            self.ctl("start")
        wait_for(self.ready, 30, 0.5, f"postgres cluster {self.cluster} accepting connections")


MAIN = PgServer("main", MAIN_ADMIN_URL)
OUTAGE = PgServer(OUTAGE_CLUSTER, f"postgresql+psycopg2://postgres@127.0.0.1:{OUTAGE_PORT}/postgres")
SERVERS = (MAIN, OUTAGE)


def server_of(url: str) -> PgServer:
    """The server a database URL points at, by port. Raises ValueError for a port no known server uses."""
    port = int(make_url(url).port or 5432)
    for server in SERVERS:
        if server.port == port:
            return server
    raise ValueError(f"{url}: port {port} is none of the test servers ({', '.join(str(s.port) for s in SERVERS)})")


def ensure_outage_server() -> PgServer:
    """Create the outage cluster if it does not exist yet (once, under a file lock), start it, and return it."""
    with open(_CREATE_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not OUTAGE.exists():
            subprocess.run(
                [
                    "pg_createcluster",
                    pg_version(),
                    OUTAGE.cluster,
                    "-p",
                    str(OUTAGE.port),
                    "--",
                    "--auth-local=trust",
                    "--auth-host=trust",
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
        OUTAGE.ensure_running()
    return OUTAGE


@contextlib.contextmanager
def holding_outage_server() -> Iterator[PgServer]:
    """The outage server, created and started if needed, held by this test alone until the block ends: tests that
    stop it wait here for one another whatever process runs them. The xdist group of those tests already runs them
    one at a time; this lock keeps that true if the grouping is not applied (pytest-xdist 3.8's loadgroup has no effect
    under pytest 9.2, which no longer reads the node id it rewrites)."""
    with open(_HOLD_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield ensure_outage_server()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_all_running() -> None:
    """The suite's safety net: every test server that exists is up, whatever a test did."""
    for server in SERVERS:
        server.ensure_running()
