"""Postgres restarted mid-study (stop, ~6 s down, start) under two real `tuner worker` processes: the workers
reconnect and carry on; no completed result is lost, no trial is left RUNNING, no trial number is duplicated,
the study ends with its n_trials. The server is started again whatever happens (here and in conftest.py)."""

from __future__ import annotations

import pytest

from testing.harness import fresh_pg_database, measure_pg_restart, pg_ready
from testing.pg_servers import OUTAGE

# They stop their server: the outage server, one such test at a time (pytest-xdist's loadgroup)
pytestmark = pytest.mark.xdist_group("pg_outage")

N_TRIALS = 6


def test_workers_survive_a_postgres_restart(tmp_path):
    with fresh_pg_database(OUTAGE) as url:  # not the `pg_url` fixture: its pooled admin connection dies in the restart
        r = measure_pg_restart(url, tmp_path, n_workers=2, n_trials=N_TRIALS, outage_s=6.0)
    assert pg_ready(url)
    acc = r["accounting"]
    assert r["exit_codes"] == [0, 0], r["logs"]
    assert r["lost_results"] == [], (acc["by_state"], r["logs"])
    assert "RUNNING" not in acc["by_state"] and acc["duplicate_numbers"] == 0
    done = sum(v for k, v in acc["by_state"].items() if k in ("COMPLETE", "PRUNED"))
    assert done == N_TRIALS and acc["unreplaced_fail"] == [], acc["by_state"]


def test_heartbeat_resumes_after_a_short_outage(tmp_path):
    """An outage shorter than the grace period must not cost a running trial: its worker's heartbeat resumes,
    so the waiting worker does not fail it as stale (grace 6 s, heartbeat 1 s, outage 3 s)."""
    from testing.harness import measure_heartbeat_outage

    with fresh_pg_database(OUTAGE) as url:
        r = measure_heartbeat_outage(url, tmp_path)
    acc = r["accounting"]
    assert r["state_after_grace"] == "RUNNING", (r["state_after_grace"], r["logs"])
    assert r["exit_codes"] == [0, 0], r["logs"]
    assert acc["by_state"] == {"COMPLETE": 1} and not acc["retried"], acc["by_state"]
