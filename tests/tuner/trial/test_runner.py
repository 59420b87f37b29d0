"""The parent side of a trial (tuner.trial.runner): how a child's exit is described, and a real warm child that
is stopped at the trial timeout and replaced."""

from __future__ import annotations

import signal

import pytest

from model.data import DataSource
from tuner.trial.outcome import TrialRequest
from tuner.trial.runner import TrialRunner, _describe_exit


def test_describe_exit():
    assert _describe_exit(None) == "exit code unknown"
    assert _describe_exit(3) == "exit code 3"
    assert _describe_exit(-signal.SIGKILL) == "killed by signal SIGKILL"


@pytest.mark.slow
def test_a_trial_past_its_timeout_is_killed_and_the_child_replaced(tmp_path):
    runner = TrialRunner(cache_dir=tmp_path / "cache")
    try:
        runner.ensure_started()  # the child imports torch here, outside the trial's clock
        assert runner.device == "cpu" and runner.child_pid is not None
        request = TrialRequest(
            config={"vocab_size": 512, "d_model": 32, "n_layers": 1, "n_seq": 32},
            data=DataSource(kind="stdlib", max_bytes=262144),
            train_tokens=10_000_000,
            eval_tokens=1000,
            ceiling_gib=1.0,
        )
        first = runner.child_pid
        outcome = runner.run(request, timeout_s=0.5)
        assert outcome.kind == "timeout", outcome.error_summary
        assert "trial_timeout_s" in (outcome.error_summary or "")
        # killed: a fresh child, started at once (warm for the next trial), serves the next trial
        assert outcome.replace_child and runner.child_pid not in (None, first)
        assert runner.n_started == 2
        runner.ensure_started()  # the prestarted child becomes ready and is used as it is
        assert runner.n_started == 2 and runner.device == "cpu"
        # it was told to open the data (a "warm" message before any trial): the next trial runs normally on it
        short = TrialRequest(
            config=request.config, data=request.data, train_tokens=256, eval_tokens=256, ceiling_gib=1.0
        )
        done = runner.run(short, timeout_s=120)
        assert done.kind == "complete" and not done.replace_child, done.error_summary
        assert 0.0 < done.busy_s <= done.wall_s and runner.n_started == 2
    finally:
        runner.close()


@pytest.mark.slow
def test_a_prestarted_child_that_dies_before_the_trial_is_replaced_and_the_trial_runs(tmp_path):
    """prestart(data) starts the child and tells it to open the data; killed before any trial, the trial still runs:
    ensure_started finds it dead and starts a fresh one, which opens the data itself."""
    import os
    import time

    data = DataSource(kind="stdlib", max_bytes=262144)
    runner = TrialRunner(cache_dir=tmp_path / "cache")
    try:
        runner.prestart((data, 512))
        first = runner.child_pid
        assert first is not None and runner.n_started == 1
        os.kill(first, signal.SIGKILL)
        time.sleep(0.2)
        request = TrialRequest(
            config={"vocab_size": 512, "d_model": 32, "n_layers": 1, "n_seq": 32},
            data=data,
            train_tokens=256,
            eval_tokens=256,
            ceiling_gib=1.0,
        )
        done = runner.run(request, timeout_s=120)
        assert done.kind == "complete", done.error_summary
        assert runner.n_started == 2 and runner.child_pid not in (None, first)
        assert done.data_s > 0 and done.busy_s > 0  # the fresh child opened the data inside the trial
    finally:
        runner.close()


def test_closing_a_child_that_is_still_starting_does_not_wait_for_it(tmp_path):
    import time

    runner = TrialRunner(cache_dir=tmp_path / "cache")
    runner.prestart()  # importing torch: it reads no message before it is ready
    t0 = time.monotonic()
    runner.close()
    assert time.monotonic() - t0 < 2.0 and runner.child_pid is None
