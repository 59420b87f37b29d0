"""Storage outage handling (tuner.storage.resilient) on a real Postgres reached through a TCP relay this test can cut:
storage calls wait out an outage and then succeed (a trial finishing during it is recorded), the heartbeat
thread survives it, the wait is bounded, stale-trial failing holds off right after an outage. (How a stale trial
is recorded: test_callbacks.py; per-worker sampler seeds: test_samplers.py.)

The relay (not a server restart) keeps these tests from disturbing other tests that share the local server; the
reliability suite restarts the real server (tests/reliability/test_pg_restart.py)."""

from __future__ import annotations

import copy
import logging
import socket
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from tests.tuner.tiny import BASE
from tuner.storage.connect import open_storage
from tuner.storage.resilient import (
    ResilientStorage,
    StorageUnavailable,
    is_connection_failure,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings(  # heartbeats outside study.optimize and fail_stale_trials are deliberate here
    "ignore:Heartbeat of storage:UserWarning", "ignore::optuna.exceptions.ExperimentalWarning"
)


class Relay:
    """A TCP relay 127.0.0.1:port -> Postgres. `cut()` closes the listener and every relayed connection (clients
    then see connection refused / reset, as in a server restart); `restore()` listens on the same port again."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = self._free_port()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.restore()

    @staticmethod
    def _free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def restore(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        if self.listener is not None:
            try:  # wakes the thread blocked in accept(); close() alone leaves the port accepting on Linux
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@pytest.fixture
def relayed(pg_url):
    """(relay, URL of the test database through the relay)."""
    from sqlalchemy.engine import make_url

    u = make_url(pg_url)
    relay = Relay((u.host, u.port or 5432))
    try:
        yield relay, u.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    finally:
        relay.cut()


def _study(storage):
    return optuna.create_study(storage=storage, directions=["minimize"], study_name="s")


def test_is_connection_failure_real_errors(pg_url):
    import sqlalchemy as sa
    import sqlalchemy.exc

    closed = Relay._free_port()  # nothing listens there
    with pytest.raises(sqlalchemy.exc.OperationalError) as refused:
        sa.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{closed}/x").connect()
    assert is_connection_failure(refused.value)
    assert not is_connection_failure(optuna.exceptions.StorageInternalError("commit failed"))
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = refused.value
    assert is_connection_failure(wrapped)
    eng = sa.create_engine(pg_url)
    with eng.begin() as c:
        c.execute(sa.text("CREATE TABLE t (k int primary key)"))
        c.execute(sa.text("INSERT INTO t VALUES (1)"))
    with pytest.raises(sqlalchemy.exc.IntegrityError) as dup, eng.begin() as c:
        c.execute(sa.text("INSERT INTO t VALUES (1)"))
    assert not is_connection_failure(dup.value)
    eng.dispose()


def test_trial_finished_during_an_outage_is_recorded_after_it(relayed, caplog):
    relay, url = relayed
    storage = open_storage(url, heartbeat_interval_s=1, grace_period_s=5)
    assert isinstance(storage, ResilientStorage)
    study = _study(storage)
    trial = study.ask()
    relay.cut()
    threading.Timer(2.0, relay.restore).start()
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tuner.storage.resilient"):
        study.tell(trial, 1.5)  # blocks through the outage, then records
    waited = time.monotonic() - t0
    assert 1.5 < waited < 15, waited
    fresh = optuna.load_study(study_name="s", storage=open_storage(url))
    assert [(t.state, t.value) for t in fresh.trials] == [(TrialState.COMPLETE, 1.5)]
    text = caplog.text
    assert "unreachable" in text and "is back after" in text
    assert f"127.0.0.1:{relay.port}" in text  # the log names where the database is (masked URL)


def test_reads_wait_out_an_outage_and_the_wait_is_bounded(relayed):
    relay, url = relayed
    storage = open_storage(url, outage_limit_s=1.5)
    study = _study(storage)
    relay.cut()
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"unreachable for 2 s .*start the worker again"):
        storage.get_all_trials(study._study_id)
    assert 1.4 < time.monotonic() - t0 < 10
    relay.restore()
    assert storage.get_all_trials(study._study_id) == []


def test_heartbeat_thread_survives_an_outage(relayed):
    from optuna.storages._heartbeat import HeartbeatThread

    relay, url = relayed
    storage = open_storage(url, heartbeat_interval_s=1, grace_period_s=5)
    study = _study(storage)
    trial = study.ask()
    beat = HeartbeatThread(trial._trial_id, storage)
    beat.start()
    try:
        time.sleep(1.5)
        relay.cut()
        time.sleep(2.5)  # beats fail here; Optuna's thread would die on the first one
        assert beat._thread.is_alive()
        relay.restore()
        time.sleep(2.5)
        assert beat._thread.is_alive()
        age = storage.heartbeat_age_s(trial._trial_id)
        assert age is not None and age < 2.0, age  # beating again after the outage
    finally:
        beat.join()


def test_no_trial_is_failed_as_stale_right_after_an_outage(relayed):
    relay, url = relayed
    grace = 5
    storage = open_storage(url, heartbeat_interval_s=1, grace_period_s=grace)
    study = _study(storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    t_beat = time.monotonic()
    relay.cut()
    threading.Timer(1.0, relay.restore).start()
    storage.get_all_trials(study._study_id)  # sees the outage and its end
    t_back = time.monotonic()
    time.sleep(max(0.0, t_beat + grace + 1.0 - time.monotonic()))  # the last heartbeat is now older than grace...
    assert time.monotonic() - t_back < grace - 0.5
    assert storage._get_stale_trial_ids(study._study_id) == []  # ...but the outage ended under `grace` s ago
    time.sleep(max(0.0, t_back + grace + 0.5 - time.monotonic()))
    assert storage._get_stale_trial_ids(study._study_id) == [trial._trial_id]


@pytest.mark.parametrize(
    "argv", [["worker", "--study", "s"], ["run", "study.yaml"], ["launch", "study.yaml", "--workers", "2"]]
)
def test_heartbeat_flags_parse(argv):
    from tuner.cli import build_parser

    args = build_parser().parse_args(argv + ["--heartbeat-s", "5", "--grace-s", "40"])
    assert (args.heartbeat_s, args.grace_s) == (5, 40)
    args = build_parser().parse_args(argv)
    assert (args.heartbeat_s, args.grace_s) == (None, None)  # None: tuner.storage's defaults


def test_grace_not_above_heartbeat_is_refused(pg_url):
    from tuner.errors import StorageError

    with pytest.raises(StorageError, match=r"grace period 5 s is shorter than the heartbeat interval 10 s"):
        open_storage(pg_url, heartbeat_interval_s=10, grace_period_s=5)


def test_launch_passes_heartbeat_flags_to_its_workers(tmp_path):
    """`tuner launch --heartbeat-s 3 --grace-s 2` reaches the worker processes: each refuses the timing (exit 2,
    not restarted) with the grace-period error, which only their open_storage can raise (launch's own uses the
    defaults)."""
    import subprocess
    import sys

    import yaml

    from tests.tuner.tiny import REPO

    d = copy.deepcopy(BASE)
    d["name"] = "flags"
    study = tmp_path / "flags.yaml"
    study.write_text(yaml.safe_dump(d, sort_keys=False))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuner.cli",
            "launch",
            str(study),
            "--workers",
            "1",
            "--storage",
            f"sqlite:///{tmp_path / 't.db'}",
            "--heartbeat-s",
            "3",
            "--grace-s",
            "2",
        ],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = r.stdout + r.stderr
    assert "grace period 2 s is shorter than the heartbeat interval 3 s" in out, out
    assert "not restarting" in out, out
