"""`python bench/storage_calls.py` end to end at toy size (2 trials of one real worker on the local Postgres): the
counts are written per label, and held trial writes keep a trial's commits far below one per attr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testing.harness import child_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_storage_calls_bench_counts_one_workers_round_trips(tmp_path):
    cmd = [sys.executable, str(REPO / "bench" / "storage_calls.py"), "--out", str(tmp_path), "--trials", "2"]
    done = subprocess.run([*cmd, "--label", "a"], cwd=REPO, env=child_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads((tmp_path / "storage_calls.json").read_text())["runs"]["a"]
    assert run["exit_code"] == 0 and run["states"] == {"COMPLETE": 2}
    # ~30 attrs and intermediate values per trial, written at a few flush points, not one transaction each.
    assert 0 < run["per_trial"]["commits"] < 30
    assert run["storage_calls_per_trial"]["set_trial_user_attr"] >= 15
    assert len(run["overheads_ms"]) == 2
