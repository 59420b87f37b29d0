"""Issue 17 item 4: storage unavailability at a worker's start is not a user error. A worker started while Postgres
is down waits for it and runs the study once it is back; `tuner launch` restarts a worker killed during an outage,
and the restarted worker waits too; launch ends 0 with nothing lost. The server is started again whatever happens."""

from __future__ import annotations

import time

import pytest

from testing.harness import (
    create_study,
    fresh_pg_database,
    pg_ctl,
    pg_ready,
    start_cli_worker,
    study_accounting,
    tiny_spec,
    wait_for,
    write_study,
)
from testing.pg_servers import OUTAGE
from testing.scenarios import figures, measure_outage_during_launch_restart

# real worker processes; they stop their server: the outage server, one such test at a time (xdist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pg_outage")]


def test_a_worker_started_during_an_outage_waits_for_the_database(tmp_path):
    with fresh_pg_database(OUTAGE) as url:
        create_study(write_study(tmp_path, tiny_spec("startout", 1)), url)
        pg_ctl("stop", url)
        try:
            w = start_cli_worker("startout", url, tmp_path / "w.log")
            time.sleep(8.0)
            still_waiting = w.poll() is None
        finally:
            pg_ctl("start", url)
            wait_for(lambda: pg_ready(url), 30, 0.2, "postgres back")
        code = w.wait(300)
        out = (tmp_path / "w.log").read_text()
        assert still_waiting, out
        assert code == 0, out
        assert "waiting up to" in out and "Traceback" not in out, out
        acc = study_accounting(url, "startout")
        assert figures(acc, 1) == {"lost": 0, "duplicated": 0, "stuck_running": 0, "budget_overshoot": 0}


def test_launch_restarts_a_worker_during_an_outage(tmp_path):
    with fresh_pg_database(OUTAGE) as url:
        r = measure_outage_during_launch_restart(url, tmp_path)
    assert pg_ready(url)
    assert r["restarted"] and not r["user_error_exit"], r["log"]
    assert r["launch_exit"] == 0, r["log"]
    assert r["figures"] == {"lost": 0, "duplicated": 0, "stuck_running": 0, "budget_overshoot": 0}, (
        r["figures"],
        r["accounting"]["by_state"],
        r["log"],
    )
