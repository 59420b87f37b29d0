"""A worker SIGKILLed mid-trial (real processes, real Postgres): its trial is failed by the heartbeat within the
grace period and re-run by another worker through RetryHeartbeatStaleTrialCallback; the retry records which
trial it replaces; the killed worker's trial child does not outlive it. Detection latency is measured.

Timing: heartbeat 1 s, grace 6 s here (the product's 30 s / 120 s would make this test minutes long; see
harness.py for how they are set)."""

from __future__ import annotations

from testing.harness import measure_sigkill


def test_sigkilled_worker_trial_is_failed_and_retried(tmp_path, pg_url):
    r = measure_sigkill(pg_url, tmp_path)
    grace, beat = r["grace_s"], r["heartbeat_s"]
    # stale = no heartbeat for `grace` s; the waiting worker checks every second
    assert grace - beat <= r["detect_s"] <= grace + beat + 6.0, r["detect_s"]
    assert r["orphans_gone"], "the killed worker's trial child kept running"
    assert r["b_exit"] == 0, r["logs"]
    acc = r["accounting"]
    ts = {t.number: t for t in acc["trials"]}
    victim = ts[r["victim"]]
    assert victim.state.name == "FAIL"
    retries = [t for t in ts.values() if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, {n: (t.state.name, t.system_attrs) for n, t in ts.items()}
    retry = retries[0]
    assert retry.system_attrs["retry_history"] == [victim.number]
    assert retry.params == victim.params  # the same configuration is re-run
    assert retry.state.name == "COMPLETE" and retry.user_attrs["end_reason"] == "complete"
    assert retry.user_attrs["worker"] != victim.user_attrs["worker"]  # by the other worker
    assert acc["by_state"] == {"FAIL": 1, "COMPLETE": 1} and acc["duplicate_numbers"] == 0
    assert acc["unreplaced_fail"] == []
