"""Issue 17 item 3: a worker (and its trial child) SIGSTOPped past the grace period, then SIGCONT. Another worker
has failed its trial as stale and re-run it; the resumed worker drops its late result quietly (one warning, no
`ValueError: Cannot tell a FAIL trial.`, no traceback) and exits 0. Heartbeat 1 s, grace 6 s."""

from __future__ import annotations

import pytest

from testing.scenarios import measure_pause_past_grace

pytestmark = pytest.mark.slow  # real worker processes


def test_a_worker_paused_past_grace_drops_its_late_result(tmp_path, pg_url):
    r = measure_pause_past_grace(pg_url, tmp_path)
    log = r["a_log"]
    assert r["a_exit"] == 0 and r["b_exit"] == 0, r["logs"]
    assert "Cannot tell" not in log and "Traceback" not in log, log[-4000:]
    assert "late result is dropped" in log, log[-4000:]
    assert r["figures"] == {"lost": 0, "duplicated": 0, "stuck_running": 0, "budget_overshoot": 0}, r["figures"]
    assert r["accounting"]["by_state"] == {"FAIL": 1, "COMPLETE": 1}, r["accounting"]["by_state"]
