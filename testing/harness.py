"""Shared machinery of the reliability suite and `bench/reliability.py`: tiny real studies, real worker processes,
Postgres control, and the measurements (SIGKILL detection, Postgres restart, load, SIGTERM).

Everything here runs the real service: `tuner worker` / `tuner launch` processes (or, where a test needs a knob the
CLI does not expose, `run_worker` in a process started from this module: see `worker_main`), real Postgres, real
tiny models trained on real text (the standard library's sources) on CPU.

Heartbeat timing: the product's defaults are a 30 s heartbeat and a 120 s grace period (tuner.storage.connect).
`worker_main` opens the worker's storage with shorter ones and hands it to `run_worker` (the same function `tuner
worker` calls); the grace period used is reported next to every latency measured with it.

Not imported by the package (bench/ and tests/ only).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from testing.pg_servers import (
    MAIN,
    OUTAGE,
    PgServer,
    holding_outage_server,
    server_of,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = MAIN.admin_url  # the shared server; outage tests use testing.pg_servers.OUTAGE
# Tokenized data shared by every test and worker process of this suite (prepared once, memory-mapped).
CACHE_DIR = Path(tempfile.gettempdir()) / "phase1_reliability_cache"
TEST_GRACE_S = 6  # grace period the SIGKILL tests run with (product default: tuner.storage.GRACE_PERIOD_S)
TEST_HEARTBEAT_S = 1


# --- studies ----------------------------------------------------------------------------------------------------------


def tiny_spec(
    name: str,
    n_trials: int,
    *,
    train_tokens: int = 256,
    eval_tokens: int = 128,
    model: dict[str, Any] | None = None,
    timeout_s: float = 300,
) -> dict[str, Any]:
    """A study a 2-core CPU runs in seconds per trial: vocab 512, d_model 32, one layer, 32-token windows."""
    m = {
        "vocab_size": 512,
        "d_model": 32,
        "n_layers": 1,
        "n_seq": 32,
        "batch_size": 2,
        "dtype": "float32",
        "loss_chunk_size": 0,
        "seed": 0,
    }
    m.update(model or {})
    return {
        "name": name,
        "objectives": [
            {"metric": "val_ppl", "direction": "minimize"},
            {"metric": "peak_vram_gib", "direction": "minimize"},
        ],
        "vram_ceiling_gib": 1,
        "sampler": {"name": "random", "seed": 0},
        "n_trials": n_trials,
        "model": m,
        "search_space": {
            "learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
            "ffn_rank": {"type": "int", "low": 8, "high": 32, "step": 8},
        },
        "data": {"source": "stdlib", "max_bytes": 262144},
        "budget": {"train_tokens": train_tokens, "eval_tokens": eval_tokens, "trial_timeout_s": timeout_s},
    }


def write_study(folder: Path, spec: dict[str, Any]) -> Path:
    path = Path(folder) / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def create_study(study_file: Path, url: str) -> None:
    """`tuner create` in-process (the study must exist before workers that load it by name start)."""
    from tuner.cli import main

    code = main(["create", str(study_file), "--storage", url])
    if code != 0:
        raise RuntimeError(f"tuner create {study_file} failed with exit {code}")


# --- processes --------------------------------------------------------------------------------------------------------


def child_env(url: str | None = None) -> dict[str, str]:
    """Environment of a worker process: one BLAS thread (8 processes on 2 cores), Triton's CPU interpreter."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TRITON_INTERPRET": "1", "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if url is not None:
        env["TUNER_STORAGE"] = url
    return env


def start_cli_worker(study: str, url: str, log_path: Path, *extra: str) -> subprocess.Popen:
    """A real `tuner worker --study NAME --quiet` process (storage URL in TUNER_STORAGE, output to log_path)."""
    cmd = [
        sys.executable,
        "-m",
        "tuner.cli",
        "worker",
        "--study",
        study,
        "--quiet",
        "--cache-dir",
        str(CACHE_DIR),
        *extra,
    ]
    with open(log_path, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            cmd, cwd=str(REPO), env=child_env(url), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def start_harness_worker(
    study: str,
    url: str,
    log_path: Path,
    *,
    grace_s: int = TEST_GRACE_S,
    heartbeat_s: int = TEST_HEARTBEAT_S,
    fault: str | None = None,
    n_trials: int | None = None,
) -> subprocess.Popen:
    """`run_worker` in a fresh process with a shorter heartbeat/grace (see the module docstring) and an optional
    test-only fault "kind:at_step:sleep_s"."""
    cmd = [
        sys.executable,
        "-m",
        "testing.harness",
        "worker",
        "--study",
        study,
        "--grace-s",
        str(grace_s),
        "--heartbeat-s",
        str(heartbeat_s),
    ]
    if fault:
        cmd += ["--fault", fault]
    if n_trials is not None:
        cmd += ["--n-trials", str(n_trials)]
    with open(log_path, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            cmd, cwd=str(REPO), env=child_env(url), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def worker_main(argv: list[str]) -> int:
    """Entry of `start_harness_worker`: run_worker on a stored study, timing and fault as given."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", required=True)
    ap.add_argument("--grace-s", type=int, required=True)
    ap.add_argument("--heartbeat-s", type=int, required=True)
    ap.add_argument("--fault", default=None)
    ap.add_argument("--n-trials", type=int, default=None)
    a = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from tuner.storage.connect import open_storage
    from tuner.storage.samplers import worker_seed
    from tuner.storage.studies import load_study
    from tuner.trial.faults import FaultInjection
    from tuner.trial.worker import default_worker_id, run_worker, spec_of_study

    fault = None
    if a.fault:
        kind, at_step, sleep_s = (a.fault.split(":") + ["1", "0.5"])[:3]
        fault = FaultInjection(kind=kind, at_step=int(at_step), sleep_s=float(sleep_s))
    storage = open_storage(
        os.environ["TUNER_STORAGE"], heartbeat_interval_s=a.heartbeat_s, grace_period_s=a.grace_s
    )  # the short test timing
    spec = spec_of_study(load_study(a.study, storage))
    worker_id = default_worker_id(None)  # as `tuner worker` does: the study seed mixed with the worker id
    return run_worker(
        spec,
        storage=storage,
        seed=worker_seed(spec.sampler.seed, worker_id),
        worker_id=worker_id,
        n_trials=a.n_trials,
        cache_dir=CACHE_DIR,
        fault=fault,
    )


def stop_process(p: subprocess.Popen, timeout: float = 10.0) -> None:
    """Make sure a process this suite started is gone (SIGKILL to its own session if it does not exit)."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout)


def session_pids(pgid: int) -> list[int]:
    """PIDs still alive in a process group (the worker and its trial child)."""
    out = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


# --- storage inspection -----------------------------------------------------------------------------------------------


def trials(url: str, name: str) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
    try:
        study_id = storage.get_study_id_from_name(name)
        return storage.get_all_trials(study_id, deepcopy=False)
    finally:
        storage.remove_session()
        storage.engine.dispose()


def running_trial_of(url: str, name: str, pid: int):
    """The RUNNING trial whose user attr `worker` names this PID (None if none yet)."""
    for t in trials(url, name):
        if t.state.name == "RUNNING" and str(t.user_attrs.get("worker", "")).split(":")[1:2] == [str(pid)]:
            return t
    return None


def study_accounting(url: str, name: str) -> dict[str, Any]:
    """Counts the suite asserts on: states, end reasons, duplicate numbers, retries."""
    ts = trials(url, name)
    numbers = [t.number for t in ts]
    by_state: dict[str, int] = {}
    for t in ts:
        by_state[t.state.name] = by_state.get(t.state.name, 0) + 1
    retried = {n for t in ts for n in t.system_attrs.get("retry_history", ())}
    return {
        "trials": ts,
        "by_state": by_state,
        "duplicate_numbers": len(numbers) - len(set(numbers)),
        "retried": retried,
        "unreplaced_fail": [t.number for t in ts if t.state.name == "FAIL" and t.number not in retried],
    }


@contextlib.contextmanager
def scratch_pg_database(
    prefix: str,
    before_create: Callable[[], Any] | None = None,
    before_drop: Callable[[], Any] | None = None,
    server: PgServer = MAIN,
) -> Iterator[str]:
    """A new database `<prefix>_<12 hex>` on `server` (default the shared one), yielded as its SQLAlchemy URL, then
    dropped (its sessions terminated first). before_create / before_drop: called first, for callers whose tests stop
    or restart the server (wait for it, or start it); the admin engine pre-pings for the same reason."""
    import sqlalchemy as sa

    if before_create is not None:
        before_create()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server.admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        if before_drop is not None:
            before_drop()
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n "
                    "AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@contextlib.contextmanager
def fresh_pg_database(server: PgServer = MAIN) -> Iterator[str]:
    """A new database on `server`, dropped afterwards, safe across a server restart: the server is started again
    before the drop if a test left it stopped. Tests that stop the server pass testing.pg_servers.OUTAGE (created on
    first use and held by one test at a time), so tests running beside them on the shared server are never cut off."""
    held = holding_outage_server() if server is OUTAGE else contextlib.nullcontext(server)
    with held, scratch_pg_database("tuner_rel", before_drop=server.ensure_running, server=server) as url:
        yield url


# --- Postgres control (testing.pg_servers): the server is the one the test's database URL names -----------------------


def pg_ready(url: str | None = None) -> bool:
    """Whether the server of `url` (None: the shared one) accepts connections."""
    return (MAIN if url is None else server_of(url)).ready()


def pg_ctl(action: str, url: str) -> None:
    """Stop or start the server that holds `url`'s database (never a default: a scenario stops only its own)."""
    server_of(url).ctl(action)


def ensure_pg_running(url: str | None = None) -> None:
    """Start the server of `url` (None: the shared one) if it is down, and wait for it: a scenario's safety net for
    its own server. Never the outage server for another test: it may be down on purpose (ensure_all_running is for
    the end of the session)."""
    (MAIN if url is None else server_of(url)).ensure_running()


# --- measurements (tests assert on them; bench/reliability.py reports them) -------------------------------------


def _logs(paths: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in paths if p.exists())


def measure_sigkill(
    url: str, workdir: Path, *, grace_s: int = TEST_GRACE_S, heartbeat_s: int = TEST_HEARTBEAT_S
) -> dict[str, Any]:
    """Worker A runs the study's only trial (slowed by the fault hook so it is mid-training); worker B waits for
    it. A is SIGKILLed; B's heartbeat check fails the trial and B re-runs it. Returns the trials and timings:
    detect_s = SIGKILL -> the trial seen FAIL in storage (polled every 0.1 s)."""
    name = f"sigkill_{uuid.uuid4().hex[:6]}"
    create_study(write_study(workdir, tiny_spec(name, 1, train_tokens=4096)), url)
    logs = [workdir / f"{name}_a.log", workdir / f"{name}_b.log"]
    a = start_harness_worker(name, url, logs[0], grace_s=grace_s, heartbeat_s=heartbeat_s, fault="slow:1:1.0")
    b = None
    try:
        victim = wait_for(lambda: running_trial_of(url, name, a.pid), 300, 0.5, "worker A running a trial")
        b = start_harness_worker(name, url, logs[1], grace_s=grace_s, heartbeat_s=heartbeat_s)
        time.sleep(max(2.0, 1.5 * heartbeat_s))  # A is mid-trial, heartbeating; B is up and waiting
        assert a.poll() is None, _logs(logs)
        os.kill(a.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        a.wait(10)

        def failed():
            t = next(t for t in trials(url, name) if t.number == victim.number)
            return t.state.name == "FAIL"

        wait_for(failed, grace_s + heartbeat_s + 120, 0.1, "the killed worker's trial failed by heartbeat")
        detect_s = time.monotonic() - t_kill
        orphans = wait_for(lambda: session_pids(a.pid) == [] or None, 30, 0.5, "trial child of the killed worker gone")
        b_code = b.wait(300)
        return {
            "study": name,
            "victim": victim.number,
            "detect_s": detect_s,
            "grace_s": grace_s,
            "heartbeat_s": heartbeat_s,
            "b_exit": b_code,
            "orphans_gone": bool(orphans),
            "accounting": study_accounting(url, name),
            "logs": _logs(logs),
        }
    finally:
        stop_process(a)
        if b is not None:
            stop_process(b)


def measure_sigterm_worker(url: str, workdir: Path) -> dict[str, Any]:
    """A real `tuner worker` mid-trial gets SIGTERM: seconds to exit, exit code, and the study afterwards. A second
    `tuner worker` then finishes the study (the interrupted trial's retry included)."""
    name = f"sigterm_{uuid.uuid4().hex[:6]}"
    # Long enough to be caught mid-training: at 4096 tokens a warm trial ends about 3 s after it starts, the same
    # moment `_has_progress` first counts it as training, so SIGTERM often arrived after the trial had completed.
    create_study(write_study(workdir, tiny_spec(name, 1, train_tokens=32768)), url)
    logs = [workdir / f"{name}_w1.log", workdir / f"{name}_w2.log"]
    w = start_cli_worker(name, url, logs[0])
    w2 = None
    try:
        victim = wait_for(lambda: running_trial_of(url, name, w.pid), 300, 0.5, "worker running a trial")
        wait_for(lambda: _has_progress(url, name, victim.number), 120, 0.5, "trial training")
        os.kill(w.pid, signal.SIGTERM)
        t0 = time.monotonic()
        try:
            code = w.wait(60)
        except subprocess.TimeoutExpired:
            code = None
        exit_s = time.monotonic() - t0
        after_stop = study_accounting(url, name)
        children_gone = bool(wait_for(lambda: session_pids(w.pid) == [] or None, 15, 0.5, "worker's child gone"))
        w2 = start_cli_worker(name, url, logs[1])
        code2 = w2.wait(300)
        return {
            "study": name,
            "victim": victim.number,
            "exit_code": code,
            "exit_s": exit_s,
            "after_stop": after_stop,
            "children_gone": children_gone,
            "finisher_exit": code2,
            "final": study_accounting(url, name),
            "logs": _logs(logs),
        }
    finally:
        stop_process(w)
        if w2 is not None:
            stop_process(w2)


def _has_progress(url: str, name: str, number: int) -> bool:
    """True once the trial has been running for a few seconds (its child is past startup and training)."""
    t = next(t for t in trials(url, name) if t.number == number)
    return (
        t.state.name == "RUNNING"
        and t.datetime_start is not None
        and (time.time() - t.datetime_start.timestamp()) > 3.0
    )


def measure_sigterm_launch(url: str, workdir: Path, n_workers: int = 2) -> dict[str, Any]:
    """`tuner launch STUDY --workers N` with trials running gets SIGTERM: seconds to exit, exit code, the study."""
    name = f"launch_{uuid.uuid4().hex[:6]}"
    # Long trials for the same reason as in measure_sigterm_worker: every running trial must be seen training.
    study_file = write_study(workdir, tiny_spec(name, 4, train_tokens=32768))
    log = workdir / f"{name}.log"
    with open(log, "w") as out:
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tuner.cli",
                "launch",
                str(study_file),
                "--workers",
                str(n_workers),
                "--cache-dir",
                str(CACHE_DIR),
            ],
            cwd=str(REPO),
            env=child_env(url),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def running():
            try:
                rs = [t for t in trials(url, name) if t.state.name == "RUNNING"]
            except KeyError:
                return None
            return rs if len(rs) >= 1 and all(_has_progress(url, name, t.number) for t in rs) else None

        running_then = wait_for(running, 300, 0.5, "launch's workers running trials")
        worker_pids = session_pids(p.pid)
        cmdlines = []
        for pid in worker_pids:
            with contextlib.suppress(OSError):
                cmdlines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        os.kill(p.pid, signal.SIGTERM)
        t0 = time.monotonic()
        try:
            code = p.wait(60)
        except subprocess.TimeoutExpired:
            code = None
        exit_s = time.monotonic() - t0
        left = wait_for(lambda: session_pids(p.pid) == [] or None, 15, 0.5, "launch's processes gone")
        return {
            "study": name,
            "exit_code": code,
            "exit_s": exit_s,
            "interrupted": [t.number for t in running_then],
            "cmdlines": cmdlines,
            "processes_gone": bool(left),
            "accounting": study_accounting(url, name),
            "log": _logs([log]),
        }
    finally:
        stop_process(p)


def measure_pg_restart(
    url: str, workdir: Path, *, n_workers: int = 2, n_trials: int = 6, outage_s: float = 6.0
) -> dict[str, Any]:
    """`n_workers` real `tuner worker` processes on one study; once trials have completed and others are running,
    the local Postgres is stopped for `outage_s` and started again. Returns the study afterwards and
    `lost_results`: trials whose training had produced a result (complete/pruned/failed) that storage does not
    hold as finished, i.e. FAIL trials of a study with no injected failures plus trials left RUNNING."""
    name = f"pgrestart_{uuid.uuid4().hex[:6]}"
    create_study(write_study(workdir, tiny_spec(name, n_trials, train_tokens=512)), url)
    logs = [workdir / f"{name}_{i}.log" for i in range(n_workers)]
    ws = [start_cli_worker(name, url, logs[i]) for i in range(n_workers)]
    outage = None
    try:

        def progressed():
            acc = study_accounting(url, name)
            return acc if acc["by_state"].get("COMPLETE", 0) >= 1 and acc["by_state"].get("RUNNING", 0) >= 1 else None

        before = wait_for(progressed, 400, 0.5, "a completed trial and a running one")
        t0 = time.monotonic()
        try:
            pg_ctl("stop", url)
            time.sleep(outage_s)
        finally:
            pg_ctl("start", url)
            wait_for(lambda: pg_ready(url), 30, 0.2, "postgres back")
        outage = time.monotonic() - t0
        codes = [w.wait(600) for w in ws]
        acc = study_accounting(url, name)
        ts = acc["trials"]
        lost = [t.number for t in ts if t.state.name in ("FAIL", "RUNNING")]
        return {
            "study": name,
            "outage_s": outage,
            "before": before["by_state"],
            "exit_codes": codes,
            "accounting": acc,
            "lost_results": lost,
            "logs": _logs(logs),
        }
    finally:
        ensure_pg_running(url)
        for w in ws:
            stop_process(w)


def measure_heartbeat_outage(
    url: str, workdir: Path, *, grace_s: int = TEST_GRACE_S, heartbeat_s: int = TEST_HEARTBEAT_S, outage_s: float = 3.0
) -> dict[str, Any]:
    """Worker A trains the study's only trial (slowed to ~30 s), worker B waits for it (checking for stale
    trials every second). Postgres is down for `outage_s` (< grace) mid-trial. A worker whose heartbeat resumes
    after the outage keeps its trial: it must not be failed as stale, and no retry may be queued."""
    name = f"hbout_{uuid.uuid4().hex[:6]}"
    create_study(write_study(workdir, tiny_spec(name, 1, train_tokens=4096)), url)
    logs = [workdir / f"{name}_a.log", workdir / f"{name}_b.log"]
    a = start_harness_worker(name, url, logs[0], grace_s=grace_s, heartbeat_s=heartbeat_s, fault="slow:1:0.5")
    b = None
    try:
        victim = wait_for(lambda: running_trial_of(url, name, a.pid), 300, 0.5, "worker A running a trial")
        b = start_harness_worker(name, url, logs[1], grace_s=grace_s, heartbeat_s=heartbeat_s)
        # the outage must fall inside training (A's trial writes its last user attr before it sends the request)
        wait_for(
            lambda: "predicted_peak_kind" in (running_trial_of(url, name, a.pid) or victim).user_attrs,
            120,
            0.5,
            "worker A's trial training",
        )
        time.sleep(3.0)
        try:
            pg_ctl("stop", url)
            time.sleep(outage_s)
        finally:
            pg_ctl("start", url)
            wait_for(lambda: pg_ready(url), 30, 0.2, "postgres back")
        time.sleep(grace_s + 2 * heartbeat_s + 2.0)  # long enough for a trial without heartbeats to go stale
        mid = next(t for t in trials(url, name) if t.number == victim.number)
        codes = [a.wait(300), b.wait(300)]
        return {
            "study": name,
            "victim": victim.number,
            "state_after_grace": mid.state.name,
            "exit_codes": codes,
            "accounting": study_accounting(url, name),
            "logs": _logs(logs),
        }
    finally:
        ensure_pg_running(url)
        stop_process(a)
        if b is not None:
            stop_process(b)


def measure_load(
    url: str, workdir: Path, *, n_workers: int = 8, per_worker: int = 25, timeout_s: float = 3600
) -> dict[str, Any]:
    """`n_workers` real `tuner worker` processes share one study of n_workers * per_worker trials. Returns the
    accounting, storage errors seen in the workers' output, trials/s (first trial start to last trial end) and the
    storage overhead per trial: median of (trial wall time in storage, start -> complete) minus the trial runner's
    own wall time for the trial (`trial_wall_s`: request sent to outcome received, i.e. train + eval in the child)."""
    name = f"load_{uuid.uuid4().hex[:6]}"
    total = n_workers * per_worker
    create_study(write_study(workdir, tiny_spec(name, total, train_tokens=128, eval_tokens=64)), url)
    logs = [workdir / f"{name}_{i}.log" for i in range(n_workers)]
    t0 = time.monotonic()
    ws = [start_cli_worker(name, url, logs[i]) for i in range(n_workers)]
    try:
        deadline = time.monotonic() + timeout_s
        codes = []
        for w in ws:
            codes.append(w.wait(max(1.0, deadline - time.monotonic())))
        wall = time.monotonic() - t0
    finally:
        for w in ws:
            stop_process(w)
    acc = study_accounting(url, name)
    ts = acc["trials"]
    finished = [t for t in ts if t.datetime_complete is not None and t.datetime_start is not None]
    span = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds()
    overheads = sorted(
        (t.datetime_complete - t.datetime_start).total_seconds() - float(t.user_attrs["trial_wall_s"])
        for t in finished
        if "trial_wall_s" in t.user_attrs
    )
    text = _logs(logs)
    storage_errors = [
        ln
        for ln in text.splitlines()
        if re.search(
            r"OperationalError|IntegrityError|StorageError|DatabaseError|deadlock|"
            r"Traceback|could not connect|server closed",
            ln,
        )
    ]
    return {
        "study": name,
        "n_workers": n_workers,
        "total": total,
        "exit_codes": codes,
        "wall_s": wall,
        "accounting": acc,
        "storage_errors": storage_errors,
        "trials_per_s": len(finished) / span if span else 0.0,
        "overhead_ms_per_trial": 1000.0 * overheads[len(overheads) // 2] if overheads else None,
        "overhead_ms_mean": 1000.0 * sum(overheads) / len(overheads) if overheads else None,
        "logs": text,
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker_main(sys.argv[2:]))
    raise SystemExit("usage: python -m testing.harness worker ...")
