"""Many workers through one `tuner proxy`: 8 real `tuner worker` processes (tiny real trials) reach a Postgres study
only through a real proxy process; every trial is accounted for, no worker sees an error, and the database never
holds more connections than the proxy's threads. A worker SIGKILLed mid-trial behind the proxy has its trial failed
`worker_lost` by the proxy and re-run by another worker. `python bench/storage_load.py` runs the 32-worker version
and the tuner-vs-bare-Optuna overhead comparison (bench/results/storage_load.json)."""

from __future__ import annotations

import pytest

from testing.harness import CACHE_DIR, create_study, fresh_pg_database, tiny_spec, write_study
from testing.storage_load import measure_proxy_load, measure_sigkill_through_proxy

pytestmark = pytest.mark.slow

N_WORKERS, PER_WORKER, THREADS = 8, 3, 3


def test_eight_tuner_workers_through_one_proxy(tmp_path):
    with fresh_pg_database() as url:
        r = measure_proxy_load(
            url, tmp_path, n_workers=N_WORKERS, per_worker=PER_WORKER, mode="tuner", threads=THREADS, timeout_s=900
        )
    acc = r["accounting"]
    assert r["exit_codes"] == [0] * N_WORKERS and r["proxy_exit_code"] == 0, r["errors"]
    assert r["errors"] == [], r["errors"]
    assert acc["duplicate_numbers"] == 0 and set(acc["by_state"]) == {"COMPLETE"}, acc["by_state"]
    # the shared budget may let a few workers start "the last" trial at once (see test_load.py)
    assert r["total"] <= acc["by_state"]["COMPLETE"] <= r["total"] + N_WORKERS - 1, acc["by_state"]
    # every trial was recorded by a tuner worker through the proxy (its attrs, the constraint, the values)
    assert all(t.user_attrs.get("end_reason") == "complete" and t.constraints for t in acc["trials"])
    assert r["connection_samples"] > 10 and 1 <= r["max_db_connections"] <= THREADS, r["max_db_connections"]
    print(
        f"{N_WORKERS} tuner workers through one proxy: {acc['by_state']}, max {r['max_db_connections']} database "
        f"connections, {r['trials_per_s']:.2f} trials/s"
    )


def test_a_killed_workers_trial_is_retried_through_the_proxy(tmp_path):
    """Heartbeats reach the database through the proxy, and the proxy fails a dead worker's trial and queues it."""
    with fresh_pg_database() as url:
        r = measure_sigkill_through_proxy(url, tmp_path)
    acc = r["accounting"]
    assert r["beating"], r["logs"]  # the victim's beats were recorded in the heartbeat table
    victim = next(t for t in acc["trials"] if t.number == r["victim"])
    assert victim.state.name == "FAIL" and victim.user_attrs.get("end_reason") == "worker_lost", r["logs"]
    retry = [t for t in acc["trials"] if t.system_attrs.get("failed_trial") == r["victim"]]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE", r["logs"]
    assert r["b_exit"] == 0 and r["proxy_exit_code"] == 0, r["logs"]
    # grace, plus at most a sweep period and a beat, plus polling/CPU slack on a shared 2-core machine
    assert r["detect_s"] < r["grace_s"] + 2 * r["heartbeat_s"] + 20, r["detect_s"]
    print(f"through the proxy: SIGKILL -> trial failed in {r['detect_s']:.1f} s (grace {r['grace_s']} s)")
