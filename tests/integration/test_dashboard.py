"""`tuner dashboard` serves optuna-dashboard on the study's storage: read back through its own HTTP API
(optuna_dashboard/_app.py: GET /api/studies, GET /api/studies/<id>), both objectives named and the over-ceiling
trial carrying the constraint the dashboard marks infeasible."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import psutil
import pytest
import yaml

from tests.tuner.tiny import BASE
from tuner.storage.connect import open_storage
from tuner.storage.constraints import set_trial_constraint
from tuner.storage.studies import create_or_load_study
from tuner.study.loader import spec_from_dict

REPO = Path(__file__).resolve().parents[2]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, deadline: float):
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError) as exc:
            last = exc
            time.sleep(0.3)
    raise AssertionError(f"dashboard did not answer {url}: {last}")


@pytest.fixture
def dashboard(pg_url):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tuner.cli", "dashboard", "--port", str(port), "--storage", pg_url],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask/tell here stands in for a worker's optimize()
def test_dashboard_reads_names_and_infeasible(pg_url, dashboard, tmp_path):
    base, proc = dashboard
    spec = spec_from_dict(yaml.safe_load(yaml.safe_dump(BASE)))
    study = create_or_load_study(spec, open_storage(pg_url))
    for ppl, vram in [(40.0, 2.0), (20.0, 10.0)]:  # the second is 2 GiB over the 8 GiB ceiling
        t = study.ask()
        spec.space.suggest(t)
        set_trial_constraint(t, vram - spec.vram_ceiling_gib)
        study.tell(t, [ppl, vram])

    deadline = time.monotonic() + 45
    listing = _get(f"{base}/api/studies", deadline)
    entry = next(s for s in listing["study_summaries"] if s["study_name"] == "unit")
    detail = _get(f"{base}/api/studies/{entry['study_id']}", deadline)
    assert detail["objective_names"] == ["val_ppl", "peak_vram_gib"]
    assert detail["directions"] == ["minimize", "minimize"]
    by_number = {t["number"]: t for t in detail["trials"]}
    assert by_number[0]["constraints"] == [-6.0] and by_number[1]["constraints"] == [2.0]
    infeasible = [n for n, t in by_number.items() if any(c > 0 for c in t["constraints"])]
    assert infeasible == [1]
    assert by_number[1]["values"] == [20.0, 10.0]
    assert proc.poll() is None  # still serving
    # bound to loopback only (the default): every listening socket of the process is on 127.0.0.1
    listening = [c for c in psutil.Process(proc.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening), listening
