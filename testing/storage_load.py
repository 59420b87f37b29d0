"""Storage load measurements shared by `bench/storage_load.py` and tests/reliability/test_storage_load.py: the tuner's
per-trial storage overhead beside bare Optuna's on the same Postgres, and many workers through one `tuner proxy`.

- `measure_bare_load`: `n_workers` processes of plain Optuna (`optuna.load_study(storage=URL).optimize`, Optuna's
  own RDBStorage with its cache layer, the same two parameters as the tuner's tiny study, random sampler) whose
  objective works `work_s` (`work="sleep"`: sleeps, leaving the CPU to the storage calls, the strict baseline;
  "busy": a CPU busy-wait, as contended as the tuner's trial child training meanwhile; "train": trains the same
  tiny model in-process with the tuner child's trainer, i.e. bare Optuna doing the tuner's job) and records that
  time as user attr `trial_wall_s`. Overhead per trial = (start -> complete in
  storage) - trial_wall_s, exactly as testing.harness.measure_load computes it for `tuner worker`.
  `heartbeat=True` gives bare Optuna the same heartbeat the tuner runs with (30 s, grace 120 s, retry callback).
- `ProxyProcess`: a real `tuner proxy` process on a free port, stopped with SIGTERM.
- `measure_proxy_load`: `n_workers` processes through one proxy, either real `tuner worker --storage grpc://...`
  (tiny real trials) or "trivial" ones (the product's grpc:// client, tuner.storage.connect.open_storage, and
  `study.optimize` with the sleeping objective: no trial child, so 32 of them fit on a small machine), while
  the database's connections are counted from pg_stat_activity every 0.1 s. Returns errors, trials, max
  connections and overhead.

Not imported by the package (bench/ and tests/ only).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from testing import harness as h

ERROR_LINES = re.compile(
    r"OperationalError|IntegrityError|StorageError|DatabaseError|deadlock|Traceback|could not connect|"
    r"server closed|RpcError|StatusCode\.|^error:"
)


def overheads_ms(trials: list) -> list[float]:
    """Per finished trial: (start -> complete in storage) - user attr trial_wall_s, in ms, sorted."""
    return sorted(
        1000.0 * ((t.datetime_complete - t.datetime_start).total_seconds() - float(t.user_attrs["trial_wall_s"]))
        for t in trials
        if t.datetime_complete is not None and t.datetime_start is not None and "trial_wall_s" in t.user_attrs
    )


def summary(values: list[float]) -> dict[str, float | None]:
    """median, p10, p90, mean of sorted values (None when empty)."""
    if not values:
        return {"median": None, "p10": None, "p90": None, "mean": None}
    n = len(values)
    return {
        "median": values[n // 2],
        "p10": values[n // 10],
        "p90": values[min(n - 1, (9 * n) // 10)],
        "mean": sum(values) / n,
    }


def _logs_errors(logs: list[Path]) -> list[str]:
    out = []
    for p in logs:
        if p.exists():
            out += [ln for ln in p.read_text(errors="replace").splitlines() if ERROR_LINES.search(ln)]
    return out


@contextlib.contextmanager
def fresh_database(wait_s: float = 300) -> Iterator[str]:
    """testing.harness.fresh_pg_database, but never starting the server: another suite on this machine may have
    stopped it on purpose, so this waits for it to be up (at most `wait_s`) before creating and before dropping."""

    def wait() -> None:
        h.wait_for(h.pg_ready, wait_s, 0.5, "postgres accepting connections")  # the shared server

    with h.scratch_pg_database("tuner_load", before_create=wait, before_drop=wait) as url:
        yield url


# --- workers -----------------------------------------------------------------------------------------------------


def train_objective() -> Any:
    """Bare Optuna doing the tuner's job: the tiny study's two parameters, its model trained and evaluated in this
    process by the same trainer the tuner's trial child calls (model.train.train_and_evaluate, one torch thread, the
    same budget as testing.harness.measure_load), two objective values; records that call's time as trial_wall_s."""
    import torch

    from model.data import DataSource, prepare_data
    from model.train import train_and_evaluate
    from tuner.study.loader import spec_from_dict

    torch.set_num_threads(1)
    spec = spec_from_dict(h.tiny_spec("bare_train", 1, train_tokens=128, eval_tokens=64), where="bare_train")
    data = prepare_data(DataSource(kind="stdlib", max_bytes=262144), 512, h.CACHE_DIR)

    def objective(trial: Any) -> tuple[float, float]:
        params = {
            "learning_rate": trial.suggest_float("learning_rate", 1.0e-3, 1.0e-2, log=True),
            "ffn_rank": trial.suggest_int("ffn_rank", 8, 32, step=8),
        }
        config = spec.build_config(params)
        t0 = time.perf_counter()
        r = train_and_evaluate(config, data, train_tokens=128, eval_tokens=64, device="cpu")
        trial.set_user_attr("trial_wall_s", round(time.perf_counter() - t0, 3))
        return float(r.val_ppl), float(params["ffn_rank"])

    return objective


def work_objective(work_s: float, work: str = "sleep") -> Any:
    """The tiny study's two parameters, `work_s` of work (sleep, or a CPU busy-wait), two objective values; records
    the work's time as user attr trial_wall_s."""

    def objective(trial: Any) -> tuple[float, float]:
        lr = trial.suggest_float("learning_rate", 1.0e-3, 1.0e-2, log=True)
        rank = trial.suggest_int("ffn_rank", 8, 32, step=8)
        t0 = time.perf_counter()
        if work == "sleep":
            time.sleep(work_s)
        else:
            x = 0
            while time.perf_counter() - t0 < work_s:
                x += 1
        trial.set_user_attr("trial_wall_s", round(time.perf_counter() - t0, 3))
        return lr, float(rank)

    return objective


def worker_main(argv: list[str]) -> int:
    """`python -m testing.storage_load {bare|trivial} --storage URL --study NAME --n-trials N --work-s S`."""
    import optuna

    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=("bare", "trivial"))
    ap.add_argument("--storage", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--n-trials", type=int, required=True)
    ap.add_argument("--work-s", type=float, required=True)
    ap.add_argument("--heartbeat", action="store_true")
    ap.add_argument("--work", choices=("sleep", "busy", "train"), default="sleep")
    a = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.RandomSampler(seed=os.getpid())
    storage: Any
    if a.kind == "bare":
        storage = a.storage
        if a.heartbeat:
            storage = optuna.storages.RDBStorage(
                a.storage,
                heartbeat_interval=30,
                grace_period=120,
                failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=3),
            )
    else:  # the product's client: tuner.storage.connect.open_storage on grpc://
        from tuner.storage.connect import open_storage

        storage = open_storage(a.storage)
    study = optuna.load_study(study_name=a.study, storage=storage, sampler=sampler)
    objective = train_objective() if a.work == "train" else work_objective(a.work_s, a.work)
    study.optimize(objective, n_trials=a.n_trials)
    return 0


def _start(
    kind: str,
    url: str,
    study: str,
    n_trials: int,
    work_s: float,
    log: Path,
    heartbeat: bool = False,
    work: str = "sleep",
):
    cmd = [sys.executable, "-m", "testing.storage_load", kind, "--storage", url, "--study", study]
    cmd += ["--n-trials", str(n_trials), "--work-s", str(work_s), "--work", work]
    cmd += ["--heartbeat"] if heartbeat else []
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=str(h.REPO), env=h.child_env(), stdout=out, stderr=subprocess.STDOUT)


def _create_plain_study(url: str, name: str) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url)
    optuna.create_study(study_name=name, storage=storage, directions=["minimize", "minimize"])
    storage.remove_session()
    storage.engine.dispose()  # this process holds no connection while the workers' are counted


def _wait_all(ps: list, timeout_s: float) -> list[int | None]:
    deadline = time.monotonic() + timeout_s
    codes: list[int | None] = []
    for p in ps:
        try:
            codes.append(p.wait(max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    for p in ps:
        h.stop_process(p)
    return codes


def measure_bare_load(
    url: str,
    workdir: Path,
    *,
    n_workers: int = 8,
    per_worker: int = 25,
    work_s: float = 0.5,
    heartbeat: bool = True,
    work: str = "sleep",
    timeout_s: float = 1800,
) -> dict[str, Any]:
    """Bare Optuna under the same load as testing.harness.measure_load (see the module docstring)."""
    name = f"bare_{uuid.uuid4().hex[:6]}"
    _create_plain_study(url, name)
    logs = [workdir / f"{name}_{i}.log" for i in range(n_workers)]
    t0 = time.monotonic()
    ps = [_start("bare", url, name, per_worker, work_s, logs[i], heartbeat, work) for i in range(n_workers)]
    codes = _wait_all(ps, timeout_s)
    wall = time.monotonic() - t0
    ts = h.trials(url, name)
    ov = overheads_ms(ts)
    return {
        "study": name,
        "n_workers": n_workers,
        "per_worker": per_worker,
        "work_s": work_s,
        "heartbeat": heartbeat,
        "work": work,
        "exit_codes": codes,
        "wall_s": wall,
        "trials": len(ts),
        "complete": sum(t.state.name == "COMPLETE" for t in ts),
        "errors": _logs_errors(logs),
        "overhead_ms": summary(ov),
        "overheads_ms_all": ov,
    }


def _heartbeat_recorded(url: str, trial: Any) -> bool:
    """True when the database's heartbeat table has a row for the trial (written by the proxy for its worker)."""
    import sqlalchemy as sa

    from tuner.storage._optuna_compat import trial_id

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            q = sa.text("SELECT count(*) FROM trial_heartbeats WHERE trial_id = :t")
            return bool(conn.execute(q, {"t": trial_id(trial)}).scalar())
    finally:
        engine.dispose()


# --- the proxy ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProxyProcess:
    """A real `tuner proxy --storage URL --port N` process (context manager; SIGTERM on exit)."""

    def __init__(self, url: str, log: Path, *, threads: int = 4, extra: tuple[str, ...] = ()):
        self.url, self.log, self.threads, self.extra = url, log, threads, extra
        self.port = free_port()
        self.grpc_url = f"grpc://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.exit_code: int | None = None

    def __enter__(self) -> ProxyProcess:
        cmd = [sys.executable, "-m", "tuner.cli", "proxy", "--storage", self.url, "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--threads", str(self.threads), *self.extra]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, cwd=str(h.REPO), env=h.child_env(), stdout=out, stderr=subprocess.STDOUT)
        h.wait_for(
            lambda: "workers: --storage" in self.log.read_text() or self.proc.poll() is not None,
            60,
            0.1,
            "tuner proxy listening",
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"tuner proxy exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.proc.wait(30)
            except subprocess.TimeoutExpired:
                h.stop_process(self.proc)
        else:
            self.exit_code = self.proc.returncode


class ConnectionCounter:
    """Counts the database's backends in pg_stat_activity every `every_s` (from the admin database, so the count
    does not include the counter's own connection)."""

    def __init__(self, database: str, every_s: float = 0.1):
        import sqlalchemy as sa

        self.database, self.every_s = database, every_s
        self.engine = sa.create_engine(h.PG_ADMIN_URL, pool_size=1)
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import sqlalchemy as sa

        q = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d")
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                self.samples.append(int(conn.execute(q, {"d": self.database}).scalar() or 0))
                conn.commit()
                self._stop.wait(self.every_s)

    def __enter__(self) -> ConnectionCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)
        self.engine.dispose()

    @property
    def max(self) -> int:
        return max(self.samples, default=0)


def measure_proxy_load(
    url: str,
    workdir: Path,
    *,
    n_workers: int = 32,
    per_worker: int = 5,
    mode: str = "trivial",
    work_s: float = 0.2,
    threads: int = 4,
    direct: bool = False,
    timeout_s: float = 1800,
) -> dict[str, Any]:
    """`n_workers` worker processes through one `tuner proxy` (or, with direct=True, straight to the database, for
    the comparison); mode "trivial" (sleeping objective) or "tuner" (`tuner worker`, tiny real trials)."""
    name = f"proxy_{mode}_{uuid.uuid4().hex[:6]}"
    database = url.rsplit("/", 1)[1]
    logs = [workdir / f"{name}_{i}.log" for i in range(n_workers)]
    proxy = None if direct else ProxyProcess(url, workdir / f"{name}_proxy.log", threads=threads)
    if proxy is not None:
        proxy.__enter__()
    try:
        storage_url = url if proxy is None else proxy.grpc_url
        if mode == "tuner":
            spec = h.tiny_spec(name, n_workers * per_worker, train_tokens=128, eval_tokens=64)
            h.create_study(h.write_study(workdir, spec), storage_url)
        else:
            _create_plain_study(url, name)
        with ConnectionCounter(database) as counter:
            t0 = time.monotonic()
            if mode == "tuner":
                ps = [h.start_cli_worker(name, storage_url, logs[i]) for i in range(n_workers)]
            else:
                ps = [_start("trivial", storage_url, name, per_worker, work_s, logs[i]) for i in range(n_workers)]
            codes = _wait_all(ps, timeout_s)
            wall = time.monotonic() - t0
    finally:
        if proxy is not None:
            proxy.__exit__(None, None, None)
    acc = h.study_accounting(url, name)
    by = acc["by_state"]
    finished = [t for t in acc["trials"] if t.datetime_complete is not None]
    span = (
        (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds()
        if finished
        else 0.0
    )
    return {
        "study": name,
        "mode": mode,
        "through_proxy": proxy is not None,
        "n_workers": n_workers,
        "per_worker": per_worker,
        "proxy_threads": threads if proxy is not None else None,
        "exit_codes": codes,
        "proxy_exit_code": proxy.exit_code if proxy is not None else None,
        "wall_s": wall,
        "by_state": by,
        "total": n_workers * per_worker,
        "errors": _logs_errors(logs + ([proxy.log] if proxy is not None else [])),
        "max_db_connections": counter.max,
        "connection_samples": len(counter.samples),
        "trials_per_s": len(finished) / span if span else 0.0,
        "overhead_ms": summary(overheads_ms(acc["trials"])),
        "accounting": acc,
    }


def measure_sigkill_through_proxy(
    url: str, workdir: Path, *, grace_s: int = h.TEST_GRACE_S, heartbeat_s: int = h.TEST_HEARTBEAT_S
) -> dict[str, Any]:
    """testing.harness.measure_sigkill with both workers on a `tuner proxy` (`--heartbeat-s`, `--grace-s` given to
    the proxy, the beat period to the workers): worker A runs the study's only trial (slowed), B waits; A is
    SIGKILLed; the proxy's stale-trial check must fail A's trial (`worker_lost`) and queue its retry, which B runs.
    detect_s = SIGKILL -> the trial seen FAIL in the database."""
    name = f"pxkill_{uuid.uuid4().hex[:6]}"
    extra = ("--heartbeat-s", str(heartbeat_s), "--grace-s", str(grace_s))
    with ProxyProcess(url, workdir / f"{name}_proxy.log", threads=2, extra=extra) as proxy:
        g = proxy.grpc_url
        h.create_study(h.write_study(workdir, h.tiny_spec(name, 1, train_tokens=4096)), g)
        logs = [workdir / f"{name}_a.log", workdir / f"{name}_b.log"]
        a = h.start_harness_worker(name, g, logs[0], grace_s=grace_s, heartbeat_s=heartbeat_s, fault="slow:1:1.0")
        b = None
        try:
            victim = h.wait_for(lambda: h.running_trial_of(url, name, a.pid), 300, 0.5, "worker A running a trial")
            b = h.start_harness_worker(name, g, logs[1], grace_s=grace_s, heartbeat_s=heartbeat_s)
            time.sleep(max(2.0, 1.5 * heartbeat_s))
            beating = _heartbeat_recorded(url, victim)
            assert a.poll() is None, h._logs(logs)
            os.kill(a.pid, signal.SIGKILL)
            t_kill = time.monotonic()
            a.wait(10)

            def failed() -> bool:
                return next(t for t in h.trials(url, name) if t.number == victim.number).state.name == "FAIL"

            h.wait_for(failed, grace_s + 3 * heartbeat_s + 120, 0.1, "the killed worker's trial failed by the proxy")
            detect_s = time.monotonic() - t_kill
            b_code = b.wait(300)
        finally:
            h.stop_process(a)
            if b is not None:
                h.stop_process(b)
    return {
        "study": name,
        "victim": victim.number,
        "detect_s": detect_s,
        "grace_s": grace_s,
        "heartbeat_s": heartbeat_s,
        "b_exit": b_code,
        "beating": beating,
        "proxy_exit_code": proxy.exit_code,
        "accounting": h.study_accounting(url, name),
        "logs": h._logs([*logs, proxy.log]),
    }


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
