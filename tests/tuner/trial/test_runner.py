"""The parent side of a trial (tuner.trial.runner): how a child's exit is described, and a real warm child that
is stopped at the trial timeout and replaced."""

from __future__ import annotations

import signal

import pytest

from model.data import DataSource
from tuner.trial.outcome import TrialRequest
from tuner.trial.runner import TrialRunner, _describe_exit


def _long_request(**kw) -> TrialRequest:
    """A tiny CPU trial with a budget far longer than any test waits for (10M tokens)."""
    return TrialRequest(
        config={"vocab_size": 512, "d_model": 32, "n_layers": 1, "n_seq": 32},
        data=DataSource(kind="stdlib", max_bytes=262144),
        train_tokens=10_000_000,
        eval_tokens=1000,
        ceiling_gib=1.0,
        **kw,
    )


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
        request = _long_request()
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
def test_a_child_that_does_not_stop_at_the_ceiling_is_killed_within_a_second_of_the_crossing(tmp_path):
    """The H100 runs recorded four killed children 1.005-1.009 s after their crossing: the kill deadline counted
    from the parent's receipt of the message. It now counts from the crossing itself (the child's clock)."""
    from tuner.trial.faults import FaultInjection
    from tuner.trial.runner import CEILING_KILL_AFTER_S

    runner = TrialRunner(cache_dir=tmp_path / "cache")
    try:
        runner.ensure_started()
        # reports a crossing, then keeps training
        request = _long_request(fault=FaultInjection("ceiling", at_step=2, sleep_s=0.4))
        outcome = runner.run(request, timeout_s=60)
        assert outcome.kind == "vram_ceiling" and outcome.killed, outcome.error_summary
        assert outcome.ceiling_stop_s is not None and CEILING_KILL_AFTER_S <= outcome.ceiling_stop_s < 1.0
        assert outcome.peak_gib == 1.5 and outcome.replace_child
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


def _short_request(data, **kw):
    base = dict(
        config={"vocab_size": 512, "d_model": 32, "n_layers": 1, "n_seq": 32},
        data=data,
        train_tokens=256,
        eval_tokens=256,
        ceiling_gib=1.0,
    )
    return TrialRequest(**{**base, **kw})


@pytest.mark.slow
def test_a_standby_child_takes_over_a_replaced_one_without_the_wait_for_a_fresh_start(tmp_path):
    """standby=True (the default on CUDA only): while a trial trains a standby child starts; when the training child
    is replaced (here: killed at the trial timeout) the standby takes over, and the next trial's wait for a ready
    child is far shorter than the fresh child's start measured at the beginning (real processes and clocks)."""
    import time

    data = DataSource(kind="stdlib", max_bytes=262144)
    runner = TrialRunner(cache_dir=tmp_path / "cache", standby=True)
    try:
        t0 = time.monotonic()
        runner.ensure_started()
        fresh_start_s = time.monotonic() - t0
        done = runner.run(_short_request(data), timeout_s=120)
        assert done.kind == "complete" and runner.n_started == 2  # the training child and its standby
        assert runner.wait_standby(timeout_s=120)  # its imports done (it started while the trial trained)
        first = runner.child_pid
        stopped = runner.run(_short_request(data, train_tokens=10_000_000), timeout_s=0.5)
        assert stopped.kind == "timeout" and stopped.replace_child
        assert runner.n_promoted == 1 and runner.child_pid not in (None, first)
        t0 = time.monotonic()
        runner.ensure_started()
        takeover_s = time.monotonic() - t0
        assert takeover_s < fresh_start_s / 2, (takeover_s, fresh_start_s)
        after = runner.run(_short_request(data), timeout_s=120)
        assert after.kind == "complete", after.error_summary
        assert after.data_s < 0.05  # the standby had opened the data before it took over
    finally:
        runner.close()


@pytest.mark.slow
def test_a_standby_child_that_died_is_never_promoted_and_nothing_is_lost(tmp_path):
    """The standby is killed between trials: the next trial starts another one, and that one (still importing,
    perhaps) takes over at the replacement; the trial after it completes."""
    import multiprocessing
    import os

    data = DataSource(kind="stdlib", max_bytes=262144)
    runner = TrialRunner(cache_dir=tmp_path / "cache", standby=True)
    try:
        assert runner.run(_short_request(data), timeout_s=120).kind == "complete"
        standby = next(p for p in multiprocessing.active_children() if p.name.endswith("-standby"))
        os.kill(standby.pid, signal.SIGKILL)
        standby.join(5)
        stopped = runner.run(_short_request(data, train_tokens=10_000_000), timeout_s=0.5)
        assert stopped.kind == "timeout" and runner.n_started == 3  # a new standby started with this trial
        assert runner.n_promoted == 1 and runner.child_pid not in (None, standby.pid)
        after = runner.run(_short_request(data), timeout_s=120)
        assert after.kind == "complete", after.error_summary
    finally:
        runner.close()
    assert runner.child_pid is None and not any(
        p.name.startswith("tuner-trial-child") for p in multiprocessing.active_children()
    )


@pytest.mark.slow
@pytest.mark.parametrize(("fresh_child", "counts"), [(None, (0, 1)), (True, (0, 0))], ids=["warm", "fresh"])
def test_a_child_serves_trial_after_trial_unless_a_fresh_child_is_asked_for(tmp_path, fresh_child, counts):
    """Eager on CPU (the default rule): one child runs both trials, `child_trials_before` 0 then 1. With
    fresh_child=True (what a compiled step on CUDA gets) each trial runs in a new process and counts 0, and the
    outcome says the child was replaced (real children, real trials)."""
    data = DataSource(kind="stdlib", max_bytes=262144)
    runner = TrialRunner(cache_dir=tmp_path / "cache", fresh_child=fresh_child)
    try:
        first = runner.run(_short_request(data), timeout_s=120)
        pid = runner.child_pid
        second = runner.run(_short_request(data), timeout_s=120)
        assert (first.kind, second.kind) == ("complete", "complete"), (first.error_summary, second.error_summary)
        assert (first.child_trials_before, second.child_trials_before) == counts
        replaced = fresh_child is True
        assert first.replace_child is replaced and second.replace_child is replaced
        assert (runner.child_pid not in (None, pid)) if replaced else (runner.child_pid == pid)
    finally:
        runner.close()


def test_only_a_compiled_step_on_cuda_asks_for_a_fresh_child_by_default():
    from tuner.study.spec import StepMode

    runner = TrialRunner()  # no child is started: the rule reads the device the child reported and the request
    for device, step, fresh in [
        ("cuda", StepMode.COMPILE_GRAPHS, True),
        ("cuda", StepMode.COMPILE, True),
        ("cuda", StepMode.EAGER, False),
        ("cpu", StepMode.COMPILE, False),
    ]:
        runner.device = device
        assert runner.fresh_child_after(_long_request(step=step)) is fresh, (device, step)
    runner.fresh_child = False
    runner.device = "cuda"
    assert runner.fresh_child_after(_long_request(step=StepMode.COMPILE_GRAPHS)) is False
