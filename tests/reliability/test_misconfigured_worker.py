"""Issue 17 item 1: a worker whose environment is broken (data folder moved away; `--cache-dir` an existing file)
stops before taking any trial, says why in one line, exits 2, and leaves the budget untouched: a corrected worker
then runs the study's full n_trials."""

from __future__ import annotations

import pytest

from testing.scenarios import measure_misconfigured_worker

N_TRIALS = 3

pytestmark = pytest.mark.slow  # real worker processes


def test_a_misconfigured_worker_does_not_spend_the_study(tmp_path, pg_url):
    r = measure_misconfigured_worker(pg_url, tmp_path, n_trials=N_TRIALS)
    for label, run in r["runs"].items():
        out = run["output"].strip()
        assert run["exit_code"] == 2, (label, run["exit_code"], out)
        assert run["exit_s"] < 60, (label, run["exit_s"])
        assert run["counted_after"] == 0, (label, run["counted_after"])  # the budget is untouched
        errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in out, (label, out)
    assert "data.path" in r["runs"]["data_missing"]["output"]
    assert "--cache-dir" in r["runs"]["cache_dir_is_a_file"]["output"]
    assert r["fixed_exit"] == 0, r["logs"]
    assert r["figures"] == {"lost": 0, "duplicated": 0, "stuck_running": 0, "budget_overshoot": 0}, r["figures"]
    assert r["accounting"]["by_state"].get("COMPLETE", 0) + r["accounting"]["by_state"].get("PRUNED", 0) == N_TRIALS
