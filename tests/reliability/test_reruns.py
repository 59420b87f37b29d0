"""Issue 17 item 6: re-running a seeded study, or two runs at once on one file, continues the sampler's sequence
instead of replaying it: no configuration of a later run repeats an earlier trial's (random sampler, seed 0)."""

from __future__ import annotations

import pytest

from testing.scenarios import measure_reruns

pytestmark = pytest.mark.slow  # real worker processes


def test_reruns_continue_the_sampler_sequence(tmp_path):
    r = measure_reruns(f"sqlite:///{tmp_path / 'rerun.db'}", tmp_path, first=3, concurrent=2)
    assert r["exit_codes"] == [0, 0, 0], r["logs"]
    assert r["repeats"] == [], (r["repeats"], [(t.number, t.params) for t in r["accounting"]["trials"]])
    assert r["figures"]["budget_overshoot"] == 0 and r["figures"]["stuck_running"] == 0, r["figures"]
