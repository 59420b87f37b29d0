"""What `tuner launch` shows (tuner.trial.launch_view): one line per worker from its status, and the end summary
attributing real Optuna trials to worker slots by the pid in their `worker` attr."""

from __future__ import annotations

import datetime

import optuna

from tuner.trial.launch_view import is_trained, stopped_for_window, summarize, trial_pid, worker_line
from tuner.trial.worker_status import WorkerStatus

State = optuna.trial.TrialState


def _trial(number, state, worker, reason=None, start=None, busy=None):
    attrs = {"worker": worker} if worker else {}
    if busy is not None:
        attrs["gpu_busy_frac"] = busy
    if reason:
        attrs["end_reason"] = reason
    t = optuna.trial.create_trial(
        state=state,
        values=[1.0, 1.0] if state == State.COMPLETE else None,
        user_attrs=attrs,
    )
    t.number = number
    if start is not None:
        t.datetime_start = start
    return t


def test_worker_lines():
    s = WorkerStatus("h:42:gpu0", 42, 0, trial=7, step=120, tokens=1_966_080, finished={"complete": 2, "pruned": 1})
    assert (
        worker_line("w0 gpu0", s, True)
        == "w0 gpu0  h:42:gpu0  trial 7 step 120 (1.97M tokens)  done 3 (complete 2, pruned 1)"
    )
    idle = WorkerStatus("h:43", 43)
    assert worker_line("w1", idle, True) == "w1  h:43  between trials  done 0"
    assert worker_line("w1", idle, False) == "w1  h:43  stopped  done 0"
    assert worker_line("w2", None, True) == "w2  starting"


def test_summary_by_slot_counts_trained_and_restarts():
    trials = [
        _trial(0, State.COMPLETE, "h:10:gpu0", "complete", busy=0.9),
        _trial(1, State.COMPLETE, "h:10:gpu0", "predicted_over_ceiling", busy=0.0),
        _trial(2, State.FAIL, "h:10:gpu0", "worker_lost"),
        _trial(3, State.COMPLETE, "h:11:gpu0", "vram_ceiling", busy=0.7),  # the restarted process of slot w0
        _trial(4, State.PRUNED, "h:20:gpu0", "learning_curve"),
        _trial(5, State.COMPLETE, "h:99", "complete"),  # another launch's worker
    ]
    s = summarize(trials, [("w0 gpu0", [10, 11], 1), ("w1 gpu0", [20], 0)], wall_s=1800.0)
    w0, w1 = s.rows
    assert (w0.complete, w0.trained, w0.failed, w0.pruned, w0.restarts) == (3, 2, 1, 0, 1)
    assert (w1.complete, w1.trained, w1.pruned) == (0, 0, 1)
    assert s.trained == 2 and s.trained_per_hour == 4.0 and s.unattributed == 1
    lines = s.lines()
    assert lines[0] == "w0 gpu0: complete 3 (trained 2), pruned 0, failed 1, restarts 1"
    assert lines[-1] == (
        "launch: 5 trials finished in 1800 s by 2 worker(s); 2 trained, 4.0 trained trials per hour; "
        "1 finished by other workers; median gpu_busy_frac 0.90"
    )
    assert s.median_busy_frac == 0.9  # of the trained trials only (the refused one's 0.0 left out)


def test_summary_leaves_out_trials_of_an_earlier_launch():
    now = datetime.datetime.now()
    old = _trial(0, State.COMPLETE, "h:10", "complete", start=now - datetime.timedelta(hours=1))
    new = _trial(1, State.COMPLETE, "h:10", "complete", start=now + datetime.timedelta(seconds=1))
    s = summarize([old, new], [("w0", [10], 0)], wall_s=60.0, since=now)
    assert s.trained == 1


def test_trial_pid_and_trained():
    assert trial_pid(_trial(0, State.COMPLETE, "host:123:gpu1")) == 123
    assert trial_pid(_trial(0, State.COMPLETE, None)) is None
    assert trial_pid(_trial(0, State.COMPLETE, "weird")) is None
    assert not is_trained(_trial(0, State.COMPLETE, "h:1", "predicted_over_ceiling"))
    assert is_trained(_trial(0, State.COMPLETE, "h:1", "oom"))
    assert not is_trained(_trial(0, State.PRUNED, "h:1", "timeout"))


def test_the_totals_line_says_the_window_ended_when_a_worker_stopped_for_it():
    now = datetime.datetime.now()
    exits = {
        "h:10:gpu0": {"reason": "stop_after", "at": now + datetime.timedelta(seconds=5)},
        "h:11:gpu0": {"reason": "done", "at": now + datetime.timedelta(seconds=5)},
        "h:30": {"reason": "stop_after", "at": now - datetime.timedelta(hours=1)},  # an earlier launch's worker
    }
    assert stopped_for_window(exits, [10], since=now)
    assert not stopped_for_window(exits, [11], since=now)  # its budget was spent
    assert not stopped_for_window(exits, [30], since=now)  # before this launch
    assert not stopped_for_window(exits, [99], since=now)  # no worker of this launch
    trials = [_trial(0, State.COMPLETE, "h:10:gpu0", "complete")]
    ended = summarize(trials, [("w0", [10], 0)], wall_s=60.0, window_ended=True).lines()[-1]
    assert ended.endswith("; --stop-after window ended (the rest of the budget is left for the next launch)")
    assert "window" not in summarize(trials, [("w0", [10], 0)], wall_s=60.0).lines()[-1]
