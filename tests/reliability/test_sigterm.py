"""SIGTERM to a real `tuner worker` and to `tuner launch` while trials train: the current trials end cleanly as
`interrupted` and are re-enqueued (the retry records the trial it replaces), the process exits 0 within 30 s,
no trial child outlives it; the study can then be finished. The storage URL carries a password, which must never
show in the output nor in the workers' command lines."""

from __future__ import annotations

from testing.harness import measure_sigterm_launch, measure_sigterm_worker

SECRET = "Term" + "Pw" + "4k2"


def _with_password(pg_url: str) -> str:
    return pg_url.replace("postgres@", f"postgres:{SECRET}@", 1)


def _assert_interrupted_and_requeued(trials, numbers):
    by_number = {t.number: t for t in trials}
    for n in numbers:
        t = by_number[n]
        assert t.state.name == "FAIL" and t.user_attrs["end_reason"] == "interrupted", (n, t.state, t.user_attrs)
        retries = [r for r in trials if r.system_attrs.get("failed_trial") == n]
        assert len(retries) == 1 and retries[0].params == t.params, (n, [r.system_attrs for r in trials])
        assert retries[0].system_attrs["retry_history"] == [n]


def test_sigterm_worker(tmp_path, pg_url):
    r = measure_sigterm_worker(_with_password(pg_url), tmp_path)
    assert r["exit_code"] == 0 and r["exit_s"] < 30.0, (r["exit_code"], r["exit_s"], r["logs"])
    assert r["children_gone"]
    after = r["after_stop"]
    assert after["by_state"] == {"FAIL": 1, "WAITING": 1}, after["by_state"]
    _assert_interrupted_and_requeued(after["trials"], [r["victim"]])
    # a later worker runs the retry; the study ends with its one trial done, nothing RUNNING or lost
    final = r["final"]
    assert r["finisher_exit"] == 0 and final["by_state"] == {"FAIL": 1, "COMPLETE": 1}, (final["by_state"], r["logs"])
    assert final["unreplaced_fail"] == [] and final["duplicate_numbers"] == 0
    assert SECRET not in r["logs"]


def test_sigterm_launch(tmp_path, pg_url):
    r = measure_sigterm_launch(_with_password(pg_url), tmp_path, n_workers=2)
    assert r["exit_code"] == 0 and r["exit_s"] < 30.0, (r["exit_code"], r["exit_s"], r["log"])
    assert r["processes_gone"]
    acc = r["accounting"]
    assert "RUNNING" not in acc["by_state"], acc["by_state"]
    interrupted = [t.number for t in acc["trials"] if t.user_attrs.get("end_reason") == "interrupted"]
    assert interrupted and set(interrupted) <= set(r["interrupted"]), (interrupted, r["interrupted"])
    _assert_interrupted_and_requeued(acc["trials"], interrupted)
    assert acc["unreplaced_fail"] == [] and acc["duplicate_numbers"] == 0
    assert r["cmdlines"] and not any(SECRET in c for c in r["cmdlines"])  # the URL travels in the environment
    assert SECRET not in r["log"]
