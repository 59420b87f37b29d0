"""`tuner status` on a study with a real worker running: the worker is `alive` with its running trial and step
(stored progress), `--watch` draws that in a live table and exits 130 on Ctrl-C without a traceback, and after the
worker is stopped (SIGTERM, a clean stop) it is `stopped`, not alive."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.tuner.tiny import mutate
from tuner.cli import main

REPO = Path(__file__).resolve().parents[3]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TUNER_STORAGE"}
    env["PYTHONPATH"] = str(REPO)
    return env


def _status(url, capsys):
    capsys.readouterr()
    assert main(["status", "--study", "unit", "--storage", url, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _watch_on_a_terminal(url, cwd):
    """Run `status --watch` with its output on a pty (the live table's real setting); once a table was drawn,
    Ctrl-C (SIGINT). Returns (exit code, everything it drew)."""
    primary, secondary = os.openpty()
    watch = subprocess.Popen(
        [sys.executable, "-m", "tuner.cli", "status", "--study", "unit", "--storage", url, "--watch",
         "--interval", "0.5"],
        cwd=cwd, env=_env(), stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary,
    )  # fmt: skip
    os.close(secondary)
    screen, deadline = b"", time.monotonic() + 90
    while time.monotonic() < deadline and b"workers" not in screen:
        ready, _, _ = select.select([primary], [], [], 1.0)
        if ready:
            screen += os.read(primary, 65536)
    time.sleep(1.5)  # a few refreshes
    watch.send_signal(signal.SIGINT)
    code = watch.wait(timeout=30)
    while select.select([primary], [], [], 0.5)[0]:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the pty closes once the process is gone
            break
        if not chunk:
            break
        screen += chunk
    os.close(primary)
    return code, screen.decode(errors="replace")


def test_watch_and_json_are_exclusive(tmp_path, capsys):
    assert main(["status", "--study", "x", "--watch", "--json", "--storage", f"sqlite:///{tmp_path}/s.db"]) == 2
    assert "choose one" in capsys.readouterr().err


@pytest.mark.slow
def test_live_worker_is_alive_with_its_step_then_stopped(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/s.db"
    spec = mutate(
        n_trials=3,
        data={"source": "stdlib", "max_bytes": 262144},
        budget={"train_tokens": 400_000, "eval_tokens": 512, "trial_timeout_s": 300},
    )
    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump(spec))
    worker = subprocess.Popen(
        [sys.executable, "-m", "tuner.cli", "run", str(study_file), "--storage", url],
        cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline, row = time.monotonic() + 180, None
        while time.monotonic() < deadline:
            time.sleep(1.0)
            if not (tmp_path / "s.db").exists():
                continue
            try:
                workers = _status(url, capsys)["workers"]
            except (AssertionError, json.JSONDecodeError):
                continue  # the study is not created yet
            row = next((w for w in workers if w["running"] and w["progress"]), None)
            if row is not None:
                break
        assert row is not None, worker.stderr.read() if worker.poll() is not None else "no progress stored"
        assert row["state"] == "alive" and row["alive"] is True
        number = row["running"][0]
        assert row["progress"][str(number)]["step"] >= 1

        code, screen = _watch_on_a_terminal(url, tmp_path)
        assert code == 130, screen
        assert "Traceback" not in screen and "workers" in screen and "alive" in screen, screen
    finally:
        worker.send_signal(signal.SIGTERM)  # a clean stop: the trial ends interrupted, the worker records its exit
        worker.communicate(timeout=120)
    (row,) = _status(url, capsys)["workers"]
    assert row["state"] == "stopped" and row["exit"]["reason"] == "interrupted"
