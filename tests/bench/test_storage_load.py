"""`python bench/storage_load.py` end to end at toy sizes (2 workers x 2 trials, 3 workers through the proxy): every
section is written with its figures, from real worker processes on the local Postgres and a real `tuner proxy`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testing.harness import child_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_storage_load_bench_writes_every_section(tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "bench" / "storage_load.py"),
        "--out",
        str(tmp_path),
        "--workers",
        "2",
        "--per-worker",
        "2",
        "--rounds",
        "1",
        "--proxy-workers",
        "3",
        "--proxy-per-worker",
        "2",
        "--proxy-threads",
        "2",
    ]
    r = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads((tmp_path / "storage_load.json").read_text())
    load, proxy, kill = out["load"], out["proxy"], out["proxy_sigkill"]
    assert {"device", "optuna", "started"} <= set(out)
    for key in ("tuner", "bare", "bare_heartbeat", "bare_busy", "bare_train"):
        assert load[f"{key}_ms_per_trial"] > 0, load
    assert load["ratio"] == pytest.approx(load["tuner_ms_per_trial"] / load["bare_ms_per_trial"], rel=0.01)
    assert proxy["trials"] == 6 and proxy["errors"] == 0 and proxy["lost_trials"] == 0
    assert 1 <= proxy["max_db_connections"] <= 2 < proxy["direct_max_db_connections"], proxy
    assert kill["victim_end_reason"] == "worker_lost" and kill["retry_state"] == ["COMPLETE"], kill
