"""The phases of one trial's wall time (tuner.trial.phases): consecutive, carved by the child's own figures where
it measured them, and the one definition of gpu_busy_frac."""

from __future__ import annotations

import datetime
import time

import pytest

from tuner.trial.phases import PHASES, PhaseClock, busy_fraction


def test_busy_fraction_is_train_and_eval_over_every_phase():
    assert busy_fraction({"sample": 1.0, "train": 2.0, "eval": 1.0}) == pytest.approx(0.75)
    assert busy_fraction({"sample": 0.5, "build": 0.5}) == 0.0
    assert busy_fraction({}) == 0.0
    assert busy_fraction({"train": 1.0, "report": -0.5}) == 1.0  # a negative figure never counts


def test_the_clock_starts_at_the_trials_creation_and_the_phases_add_up_to_its_wall_time():
    created = datetime.datetime.now() - datetime.timedelta(seconds=0.2)  # the ask was 0.2 s ago
    clock = PhaseClock(created)
    clock.enter("wait_child")
    time.sleep(0.05)
    clock.enter("handoff")
    time.sleep(0.1)
    clock.enter("report", parts={"data": 0.01, "train": 0.06, "eval": 0.02})  # the child's account of its run
    clock.close()
    p = clock.phase_s
    assert p["sample"] == pytest.approx(0.2, abs=0.02) and p["wait_child"] == pytest.approx(0.05, abs=0.02)
    assert (p["data"], p["train"], p["eval"]) == (0.01, 0.06, 0.02)
    assert p["handoff"] == pytest.approx(0.1 - 0.09, abs=0.02)
    assert sum(p.values()) == pytest.approx(clock.wall_s, abs=1e-9)
    attrs = clock.attrs()
    assert list(attrs["phase_s"]) == [k for k in PHASES if k in p]
    assert attrs["gpu_busy_frac"] == pytest.approx(0.08 / clock.wall_s, abs=1e-3)


def test_the_childs_figures_never_exceed_the_phase_they_are_carved_from():
    clock = PhaseClock(None, first="handoff")
    time.sleep(0.02)
    clock.enter("report", parts={"train": 10.0, "eval": 5.0})  # a child's clock ahead of the worker's
    clock.close()
    p = clock.phase_s
    assert p["eval"] == 0.0 and p["handoff"] == 0.0 and p["train"] == pytest.approx(clock.wall_s - p["report"])
    assert 0.0 <= clock.attrs()["gpu_busy_frac"] <= 1.0
