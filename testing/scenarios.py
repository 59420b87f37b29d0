"""Reliability scenarios of the second round (issue 17): a misconfigured worker, a worker paused past the grace
period, an outage while `tuner launch` restarts a worker, SIGTERM during an outage, concurrent and repeated runs,
concurrent starts against the budget, a read-only SQLite file. Each runs the real service (real `tuner` processes,
real Postgres stopped and started, real signals, tiny real models on CPU) and returns what tests/reliability/
asserts and bench/reliability.py reports.

Every scenario's study is judged by `figures(...)`: trials lost, duplicated, stuck RUNNING, and the budget overshoot
(goal 0 for each).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path
from typing import Any

from testing.harness import (
    CACHE_DIR,
    REPO,
    _logs,
    child_env,
    create_study,
    ensure_pg_running,
    pg_ctl,
    pg_ready,
    running_trial_of,
    start_cli_worker,
    start_harness_worker,
    stop_process,
    study_accounting,
    tiny_spec,
    trials,
    wait_for,
    write_study,
)

FAST = ("--heartbeat-s", "1", "--grace-s", "6")  # CLI timing for scenarios that wait for a stale trial


def counted(acc: dict[str, Any]) -> int:
    """Trials the budget counts: COMPLETE + PRUNED + FAIL not replaced by a retry (tuner.trial.budget)."""
    done = sum(v for k, v in acc["by_state"].items() if k in ("COMPLETE", "PRUNED"))
    return done + len(acc["unreplaced_fail"])


def figures(acc: dict[str, Any], n_trials: int) -> dict[str, int]:
    """The four counts every scenario is judged by (goal 0 each), from study_accounting():
    lost: budget the study ended without (n_trials minus counted trials, when short) plus FAIL trials nobody
    replaced that are not a deliberate end; duplicated: extra copies of a configuration measured more than once
    (COMPLETE/PRUNED trials with identical params); stuck_running: trials left RUNNING; budget_overshoot: counted
    trials beyond n_trials. Counted = COMPLETE + PRUNED + FAIL not replaced by a retry (tuner.trial.budget)."""
    ts = acc["trials"]
    done = [t for t in ts if t.state.name in ("COMPLETE", "PRUNED")]
    counted = len(done) + len(acc["unreplaced_fail"])
    seen: dict[tuple[Any, ...], int] = {}
    for t in done:
        key = tuple(sorted(t.params.items()))
        seen[key] = seen.get(key, 0) + 1
    return {
        "lost": max(0, n_trials - counted) + len(acc["unreplaced_fail"]),
        "duplicated": sum(n - 1 for n in seen.values()),
        "stuck_running": acc["by_state"].get("RUNNING", 0),
        "budget_overshoot": max(0, counted - n_trials),
    }


def text_folder(folder: Path, n_bytes: int = 300_000) -> Path:
    """A folder of real text files (copies of standard-library sources) for a `data: {source: files}` study."""
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for src in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        shutil.copy(src, folder / src.name)
        total += src.stat().st_size
        if total >= n_bytes:
            break
    return folder


def _cli(args: list[str], url: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tuner.cli", *args],
            cwd=str(REPO),
            env=child_env(url),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait(p: subprocess.Popen[bytes], timeout: float) -> tuple[int | None, float]:
    t0 = time.monotonic()
    try:
        return p.wait(timeout), time.monotonic() - t0
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - t0


def measure_misconfigured_worker(url: str, workdir: Path, *, n_trials: int = 3) -> dict[str, Any]:
    """Issue 17 item 1. A study on `data: {source: files, path: DIR}`; DIR is moved away and a `tuner worker` is
    started; then one with `--cache-dir` an existing file. Each must exit non-zero within seconds with one line and
    leave the budget untouched. DIR is put back and a corrected worker must run the full n_trials."""
    name = f"misconf_{uuid.uuid4().hex[:6]}"
    data = text_folder(workdir / f"{name}_text")
    spec = tiny_spec(name, n_trials)
    spec["data"] = {"source": "files", "path": str(data), "max_bytes": 262144}
    create_study(write_study(workdir, spec), url)
    moved = data.with_name(data.name + "_moved")
    data.rename(moved)
    runs = {}
    cache_file = workdir / "cache_is_a_file"
    cache_file.write_text("not a folder")
    for label, extra in (("data_missing", []), ("cache_dir_is_a_file", ["--cache-dir", str(cache_file)])):
        if label == "cache_dir_is_a_file":
            moved.rename(data)
        log = workdir / f"{name}_{label}.log"
        p = _cli(["worker", "--study", name, "--quiet", *(extra or ["--cache-dir", str(CACHE_DIR)])], url, log)
        code, exit_s = _wait(p, 120)
        stop_process(p)
        acc = study_accounting(url, name)
        runs[label] = {
            "exit_code": code,
            "exit_s": exit_s,
            "output": log.read_text(errors="replace"),
            "trials": len(acc["trials"]),
            "counted_after": counted(acc),
        }
    log = workdir / f"{name}_fixed.log"
    p = start_cli_worker(name, url, log)
    code, exit_s = _wait(p, 600)
    stop_process(p)
    acc = study_accounting(url, name)
    return {
        "study": name,
        "runs": runs,
        "fixed_exit": code,
        "fixed_s": exit_s,
        "accounting": acc,
        "figures": figures(acc, n_trials),
        "logs": _logs([log]),
    }


def measure_pause_past_grace(url: str, workdir: Path, *, grace_s: int = 6, heartbeat_s: int = 1) -> dict[str, Any]:
    """Issue 17 item 3. Worker A trains the study's only trial (slowed); worker B waits. A (and its trial child) is
    SIGSTOPped past the grace period; B fails the trial as stale and re-runs it; A gets SIGCONT. A must drop its late
    result quietly (no `Cannot tell a FAIL trial`, no traceback) and exit 0."""
    name = f"pause_{uuid.uuid4().hex[:6]}"
    create_study(write_study(workdir, tiny_spec(name, 1, train_tokens=4096)), url)
    logs = [workdir / f"{name}_a.log", workdir / f"{name}_b.log"]
    a = start_harness_worker(name, url, logs[0], grace_s=grace_s, heartbeat_s=heartbeat_s, fault="slow:1:0.3")
    b = None
    try:
        victim = wait_for(lambda: running_trial_of(url, name, a.pid), 300, 0.5, "worker A running a trial")
        b = start_harness_worker(name, url, logs[1], grace_s=grace_s, heartbeat_s=heartbeat_s)
        wait_for(
            lambda: "predicted_peak_kind" in (running_trial_of(url, name, a.pid) or victim).user_attrs,
            120,
            0.5,
            "worker A's trial training",
        )
        os.killpg(a.pid, signal.SIGSTOP)  # the worker and its trial child, as a suspended machine would be
        t_stop = time.monotonic()

        def failed() -> bool:
            return next(t for t in trials(url, name) if t.number == victim.number).state.name == "FAIL"

        wait_for(failed, grace_s + heartbeat_s + 120, 0.2, "the paused worker's trial failed as stale")
        detect_s = time.monotonic() - t_stop
        time.sleep(2.0)
        os.killpg(a.pid, signal.SIGCONT)
        a_code, _ = _wait(a, 300)
        b_code, _ = _wait(b, 300)
        acc = study_accounting(url, name)
        return {
            "study": name,
            "detect_s": detect_s,
            "paused_s": time.monotonic() - t_stop,
            "a_exit": a_code,
            "b_exit": b_code,
            "a_log": logs[0].read_text(errors="replace"),
            "accounting": acc,
            "figures": figures(acc, 1),
            "logs": _logs(logs),
        }
    finally:
        for p in (a, b):
            if p is not None:
                try:
                    os.killpg(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                stop_process(p)


def measure_outage_during_launch_restart(url: str, workdir: Path, *, n_trials: int = 4, outage_s: float = 10.0):
    """Issue 17 item 4. `tuner launch --workers 2` runs a study; Postgres is stopped, one worker is SIGKILLed while it
    is down, so launch restarts it during the outage; the new worker must wait for the database (not exit 2), and
    launch must end 0 with the study complete once Postgres is back."""
    name = f"launchout_{uuid.uuid4().hex[:6]}"
    study_file = write_study(workdir, tiny_spec(name, n_trials, train_tokens=2048))
    log = workdir / f"{name}.log"
    p = _cli(
        ["launch", str(study_file), "--workers", "2", "--cache-dir", str(CACHE_DIR), *FAST, "--max-restarts", "3"],
        url,
        log,
    )
    try:
        wait_for(lambda: _safe_running(url, name) >= 1, 300, 0.5, "launch's workers running trials")
        workers = [pid for pid in _children(p.pid) if pid != p.pid]
        t0 = time.monotonic()
        pg_ctl("stop", url)
        try:
            time.sleep(1.0)
            victim = workers[0]
            os.kill(victim, signal.SIGKILL)
            time.sleep(outage_s)
        finally:
            pg_ctl("start", url)
            wait_for(lambda: pg_ready(url), 30, 0.2, "postgres back")
        outage = time.monotonic() - t0
        code, wall = _wait(p, 600)
        acc = study_accounting(url, name)
        text = log.read_text(errors="replace")
        return {
            "study": name,
            "outage_s": outage,
            "launch_exit": code,
            "after_outage_s": wall,
            "restarted": "restart 1/" in text,
            "user_error_exit": "user error (exit code 2)" in text,
            "accounting": acc,
            "figures": figures(acc, n_trials),
            "log": text[-6000:],
        }
    finally:
        ensure_pg_running(url)
        stop_process(p)


def _safe_running(url: str, name: str) -> int:
    try:
        return sum(1 for t in trials(url, name) if t.state.name == "RUNNING")
    except KeyError:
        return 0


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def measure_sigterm_during_outage(url: str, workdir: Path, *, command: str = "worker") -> dict[str, Any]:
    """Issue 17 item 5. A `tuner worker` (or `tuner run`) trains a trial; Postgres is stopped; 2 s later the process
    gets SIGTERM. It must exit within 30 s (143). Postgres comes back; a second worker finishes the study (the
    trial left RUNNING is failed as stale and retried). `outage_held`: the server was still down when the process
    exited (False: someone else started it meanwhile, and the run measured no outage)."""
    name = f"termout_{uuid.uuid4().hex[:6]}"
    study_file = write_study(workdir, tiny_spec(name, 1, train_tokens=32768))
    log = workdir / f"{name}_1.log"
    if command == "worker":
        create_study(study_file, url)
        p = _cli(["worker", "--study", name, "--quiet", "--cache-dir", str(CACHE_DIR), *FAST], url, log)
    else:
        p = _cli(["run", str(study_file), "--cache-dir", str(CACHE_DIR), *FAST], url, log)
    w2 = None
    try:
        wait_for(lambda: _safe_running(url, name) >= 1, 300, 0.5, "a trial running")
        time.sleep(3.0)
        t_out = time.monotonic()
        pg_ctl("stop", url)
        try:
            time.sleep(2.0)
            p.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            code, _ = _wait(p, 60)
            exit_s = time.monotonic() - t0
            # Another session's safety net (tests/reliability/conftest.py) may have started the server again:
            # then this was no outage at exit time, and the figure must not be reported as one.
            outage_held = not pg_ready(url)
        finally:
            pg_ctl("start", url)
            wait_for(lambda: pg_ready(url), 30, 0.2, "postgres back")
        outage = time.monotonic() - t_out
        children_left = _group(p.pid)
        log2 = workdir / f"{name}_2.log"
        w2 = _cli(["worker", "--study", name, "--quiet", "--cache-dir", str(CACHE_DIR), *FAST], url, log2)
        code2, _ = _wait(w2, 600)
        acc = study_accounting(url, name)
        return {
            "study": name,
            "command": command,
            "exit_code": code,
            "exit_s": exit_s,
            "outage_held": outage_held,
            "outage_s": outage,
            "children_left": children_left,
            "finisher_exit": code2,
            "accounting": acc,
            "figures": figures(acc, 1),
            "logs": _logs([log, log2]),
        }
    finally:
        ensure_pg_running(url)
        stop_process(p)
        if w2 is not None:
            stop_process(w2)


def _group(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def measure_concurrent_starts(url: str, workdir: Path, *, n_workers: int = 4, n_trials: int = 3) -> dict[str, Any]:
    """Issue 17 item 13. `n_workers` real `tuner worker` processes started at the same moment on a study of
    `n_trials` (fewer than the workers): the study must end with exactly n_trials counted trials."""
    name = f"starts_{uuid.uuid4().hex[:6]}"
    create_study(write_study(workdir, tiny_spec(name, n_trials, train_tokens=256)), url)
    logs = [workdir / f"{name}_{i}.log" for i in range(n_workers)]
    ws = [start_cli_worker(name, url, logs[i]) for i in range(n_workers)]
    try:
        codes = [_wait(w, 600)[0] for w in ws]
    finally:
        for w in ws:
            stop_process(w)
    acc = study_accounting(url, name)
    return {
        "study": name,
        "exit_codes": codes,
        "accounting": acc,
        "figures": figures(acc, n_trials),
        "logs": _logs(logs),
    }


def measure_reruns(url: str, workdir: Path, *, first: int = 3, concurrent: int = 2) -> dict[str, Any]:
    """Issue 17 item 6. `tuner run` of a seeded random-sampler study for `first` trials; then `concurrent` runs at
    once of the same file, each asking for `first` more. Configurations drawn by the re-runs must not repeat the
    earlier ones, nor one another (`repeats`: trials whose params equal an earlier trial's)."""
    name = f"rerun_{uuid.uuid4().hex[:6]}"
    spec = tiny_spec(name, first, train_tokens=256)
    study_file = write_study(workdir, spec)
    log = workdir / f"{name}_0.log"
    code0, _ = _wait(_cli(["run", str(study_file), "--cache-dir", str(CACHE_DIR)], url, log), 600)
    total = first * (1 + concurrent)
    runs = [
        _cli(
            ["run", str(study_file), "--cache-dir", str(CACHE_DIR), "--n-trials", str(total)],
            url,
            workdir / f"{name}_{i + 1}.log",
        )
        for i in range(concurrent)
    ]
    codes = [code0] + [_wait(r, 900)[0] for r in runs]
    for r in runs:
        stop_process(r)
    acc = study_accounting(url, name)
    ordered = sorted(acc["trials"], key=lambda t: t.number)
    seen: set[tuple[Any, ...]] = set()
    repeats = []
    for t in ordered:
        if t.system_attrs.get("failed_trial") is not None:
            continue  # a retry repeats its trial's params on purpose
        key = tuple(sorted(t.params.items()))
        if key in seen:
            repeats.append(t.number)
        seen.add(key)
    logs = [workdir / f"{name}_{i}.log" for i in range(concurrent + 1)]
    return {
        "study": name,
        "exit_codes": codes,
        "repeats": repeats,
        "accounting": acc,
        "figures": figures(acc, total),
        "logs": _logs(logs),
    }


def measure_read_only_sqlite(workdir: Path) -> dict[str, Any]:
    """Issue 17 item 7. A study in an SQLite file made immutable (`chattr +i`: read-only even for root); a worker
    on it must fail at once with one line naming the problem, not retry for the outage limit."""
    name = f"ro_{uuid.uuid4().hex[:6]}"
    db = workdir / f"{name}.db"
    url = f"sqlite:///{db}"
    create_study(write_study(workdir, tiny_spec(name, 1)), url)
    subprocess.run(["chattr", "+i", str(db)], check=True)
    log = workdir / f"{name}.log"
    try:
        p = _cli(["worker", "--study", name, "--quiet", "--cache-dir", str(CACHE_DIR)], url, log)
        code, exit_s = _wait(p, 120)
        stop_process(p)
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=False)
    return {"exit_code": code, "exit_s": exit_s, "output": log.read_text(errors="replace")}
