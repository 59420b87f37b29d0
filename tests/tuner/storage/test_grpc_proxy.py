"""The grpc:// storage (tuner.storage.grpc_proxy): URL forms, one-line errors when no proxy answers or grpc is
missing, a real in-process proxy server over SQLite and Postgres serving a study end to end with its database
connections bounded, and a client that waits for a restarting proxy instead of failing."""

from __future__ import annotations

import threading
import time

import optuna
import pytest

from testing.storage_load import free_port
from tuner.errors import StorageError
from tuner.storage import grpc_proxy
from tuner.storage._optuna_compat import grpc_proxy_server
from tuner.storage.connect import open_storage
from tuner.storage.urls import grpc_host_port, is_grpc_url


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("grpc://127.0.0.1:13000", ("127.0.0.1", 13000)),
        ("grpc://proxy.lan:1/", ("proxy.lan", 1)),
        ("grpc://[::1]:13000", ("::1", 13000)),
    ],
)
def test_grpc_urls(url, want):
    assert is_grpc_url(url) and grpc_host_port(url) == want


@pytest.mark.parametrize(
    "url",
    [
        "grpc://127.0.0.1",
        "grpc://:13000",
        "grpc://h:0",
        "grpc://h:70000",
        "grpc://h:x",
        "grpc://u:pw@h:1",
        "grpc://h:1/db",
    ],
)
def test_bad_grpc_urls_name_the_form(url):
    with pytest.raises(StorageError, match=r"is not grpc://HOST:PORT; write e.g. grpc://127.0.0.1:13000"):
        grpc_host_port(url)


def test_no_proxy_there_is_one_line_within_seconds():
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=rf"no storage proxy answers at grpc://127.0.0.1:{port} .*tuner proxy"):
        open_storage(f"grpc://127.0.0.1:{port}")
    assert time.monotonic() - t0 < grpc_proxy.READY_TIMEOUT_S + 3


def test_missing_grpc_names_the_install(monkeypatch):
    real = grpc_proxy.importlib.util.find_spec
    monkeypatch.setattr(grpc_proxy.importlib.util, "find_spec", lambda m: None if m == "grpc" else real(m))
    with pytest.raises(StorageError, match=r"needs grpcio and protobuf \(grpc missing\); pip install 'phase1-tuner\["):
        open_storage("grpc://127.0.0.1:1")


def _serve(url: str, port: int, threads: int = 2):
    db = open_storage(url, pool_size=threads)
    server = grpc_proxy_server(db, "127.0.0.1", port, threads)
    server.start()
    return db, server


def test_a_study_through_the_proxy_with_bounded_connections(storage_url):
    port = free_port()
    db, server = _serve(storage_url, port, threads=2)
    try:
        client = open_storage(f"grpc://127.0.0.1:{port}")
        assert isinstance(client, grpc_proxy.ProxyStorage) and client.url == f"grpc://127.0.0.1:{port}"
        study = optuna.create_study(study_name="s", storage=client, directions=["minimize", "minimize"])

        def work():
            s = optuna.load_study(study_name="s", storage=open_storage(f"grpc://127.0.0.1:{port}"))
            s.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_int("y", 0, 3)), n_trials=5)

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        trials = study.get_trials(deepcopy=False)
        assert len(trials) == 30 and all(t.state.name == "COMPLETE" for t in trials)
        # the proxy's pool never grew past its threads (SQLAlchemy's QueuePool, no overflow)
        assert db.engine.pool.size() == 2 and db.engine.pool.overflow() <= 0
        client.remove_session()  # the worker's end-of-run call is a no-op here
    finally:
        server.stop(grace=1).wait()


def test_client_waits_for_a_restarting_proxy(storage_url):
    port = free_port()
    db, server = _serve(storage_url, port)
    client = open_storage(f"grpc://127.0.0.1:{port}", outage_limit_s=30)
    study = optuna.create_study(study_name="r", storage=client)
    server.stop(grace=0).wait()
    restarted: list = []

    def restart():
        time.sleep(2.0)
        restarted.append(_serve(storage_url, port)[1])

    t = threading.Thread(target=restart)
    t.start()
    t0 = time.monotonic()
    try:
        study.optimize(lambda tr: tr.suggest_float("x", 0, 1), n_trials=2)  # blocks until the proxy is back
        assert time.monotonic() - t0 >= 1.5 and len(study.trials) == 2
    finally:
        t.join(30)
        for s in restarted:
            s.stop(grace=0).wait()


def test_a_proxy_that_stays_away_is_storage_unavailable(storage_url):
    port = free_port()
    db, server = _serve(storage_url, port)
    client = open_storage(f"grpc://127.0.0.1:{port}", outage_limit_s=1.5)
    client.get_all_studies()
    server.stop(grace=0).wait()
    with pytest.raises(grpc_proxy.StorageUnavailable, match=r"did not answer for 2 s; start `tuner proxy` again"):
        client.get_all_studies()


def test_the_sweep_keeps_readers_out_and_waits_for_those_inside():
    gate = grpc_proxy.ReadWriteGate()
    events: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def long_read():
        with gate.reading():
            inside.set()
            release.wait(10)
            events.append("read 1 done")

    def sweep():
        with gate.writing():
            events.append("sweep")

    def late_read():
        with gate.reading():
            events.append("read 2")

    r1 = threading.Thread(target=long_read)
    r1.start()
    inside.wait(10)
    w = threading.Thread(target=sweep)
    w.start()
    time.sleep(0.2)
    assert events == []  # the sweep waits for the read already inside
    release.set()
    w.join(10)
    r1.join(10)
    r2 = threading.Thread(target=late_read)
    r2.start()
    r2.join(10)
    assert events == ["read 1 done", "sweep", "read 2"]
    with gate.writing():  # a read arriving during a sweep waits for it
        events.append("sweep 2")
        r3 = threading.Thread(target=late_read)
        r3.start()
        time.sleep(0.2)
        assert events[-1] == "sweep 2"
    r3.join(10)
    assert events[-2:] == ["sweep 2", "read 2"]
