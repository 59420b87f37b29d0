"""Issue 17 item 13: several real `tuner worker` processes started at the same moment on a study with fewer trials
than workers end it with exactly n_trials counted trials, on Postgres (advisory lock) and on SQLite (flock beside
the file): no overshoot. Two rounds each, since one start may not race."""

from __future__ import annotations

import pytest

from testing.scenarios import measure_concurrent_starts

pytestmark = pytest.mark.slow  # real worker processes


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_concurrent_starts_take_exactly_the_budget(tmp_path, pg_url, backend):
    for round_ in range(2):
        url = pg_url if backend == "postgres" else f"sqlite:///{tmp_path / f'race{round_}.db'}"
        r = measure_concurrent_starts(url, tmp_path, n_workers=4, n_trials=2)
        assert r["exit_codes"] == [0, 0, 0, 0], r["logs"]
        assert r["figures"]["budget_overshoot"] == 0, (round_, r["accounting"]["by_state"])
        assert r["figures"] == {"lost": 0, "duplicated": 0, "stuck_running": 0, "budget_overshoot": 0}, r["figures"]
