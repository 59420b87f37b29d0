"""tuner.trial.budget: the study's shared trial budget (COMPLETE + PRUNED + FAIL minus retried FAILs), waiting for a
turn while other workers run the rest, and re-queueing interrupted trials, on real in-memory Optuna studies."""

from __future__ import annotations

import threading
import time

import optuna

from tuner.trial import budget
from tuner.trial.budget import RetryInterrupted, StudyBudget, counted_trials, enqueue_retry
from tuner.trial.recording import TrialFailed

TrialState = optuna.trial.TrialState
optuna.logging.set_verbosity(optuna.logging.ERROR)
DIST = {"x": optuna.distributions.FloatDistribution(0, 1)}


def _add(study, state, values=None, **attrs):
    study.add_trial(
        optuna.trial.create_trial(state=state, values=values, params={"x": 0.5}, distributions=DIST, **attrs)
    )
    return study.trials[-1]


def test_budget_counts_finished_trials_minus_retried_failures():
    study = optuna.create_study(directions=["minimize", "minimize"])
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for state, values in [(TrialState.COMPLETE, [1.0, 1.0]), (TrialState.PRUNED, None), (TrialState.FAIL, None)]:
        study.add_trial(optuna.trial.create_trial(state=state, values=values, params={"x": 0.5}, distributions=dist))
    assert counted_trials(study) == 3
    enqueue_retry(study, study.trials[2])
    assert counted_trials(study) == 2  # the FAIL is replaced by a WAITING retry

    import threading

    stop = threading.Event()
    assert StudyBudget(3, stop).take_turn(study) is True  # one left, nobody running it
    assert StudyBudget(2, stop).take_turn(study) is False  # budget spent
    stop.set()
    assert StudyBudget(10, stop).take_turn(study) is False  # stopping wins


def test_a_retry_of_a_retry_keeps_the_first_trial_and_the_whole_history():
    study = optuna.create_study()
    first = _add(study, TrialState.FAIL, user_attrs={"preset": "8gb", "end_reason": "interrupted"})
    enqueue_retry(study, first)
    study.tell(study.ask(), state=TrialState.FAIL)  # the retry (trial 1) fails too
    enqueue_retry(study, study.trials[1])
    third = study.trials[2]
    assert third.system_attrs == {"failed_trial": 0, "retry_history": [0, 1]}
    assert third.user_attrs == {"preset": "8gb"}  # the ending of an attempt never sticks to the retry
    assert counted_trials(study) == 0


def test_take_turn_waits_while_every_remaining_trial_runs_elsewhere(monkeypatch):
    monkeypatch.setattr(budget, "WAIT_POLL_S", 0.05)
    study = optuna.create_study()
    _add(study, TrialState.COMPLETE, [1.0])
    running = study.ask()  # another worker's trial: the last one of a budget of 2
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    assert StudyBudget(2, stop).take_turn(study) is False  # never got a turn: stopped while waiting
    assert time.monotonic() - t0 >= 0.25
    study.tell(running, state=TrialState.FAIL)
    enqueue_retry(study, study.trials[1])
    assert StudyBudget(2, threading.Event()).take_turn(study) is True  # the failed trial's retry reopened it


def test_retry_interrupted_requeues_only_interrupted_failures_and_stops_when_asked():
    study = optuna.create_study()
    stop = threading.Event()
    ends = iter(["error", "interrupted", "interrupted"])

    def objective(trial):
        trial.suggest_float("x", 0, 1)
        reason = next(ends)
        trial.set_user_attr("end_reason", reason)
        if reason == "interrupted" and len(study.trials) == 2:
            stop.set()  # SIGTERM arrives during the second trial
        raise TrialFailed(reason)

    study.optimize(objective, n_trials=3, callbacks=[RetryInterrupted(stop)], catch=(TrialFailed,))
    states = [(t.number, t.state.name, t.user_attrs.get("end_reason")) for t in study.trials]
    assert states == [(0, "FAIL", "error"), (1, "FAIL", "interrupted"), (2, "WAITING", None)]  # stopped after 1
    assert study.trials[2].system_attrs == {"failed_trial": 1, "retry_history": [1]}


def test_a_passed_deadline_ends_the_turns_and_says_so():
    study = optuna.create_study()
    stop = threading.Event()
    open_window = StudyBudget(10, stop, deadline=time.monotonic() + 60)
    assert open_window.take_turn(study) is True and open_window.window_ended is False
    closed = StudyBudget(10, stop, deadline=time.monotonic() - 1)
    assert closed.take_turn(study) is False and closed.window_ended is True  # budget left, but no new trial
    spent = StudyBudget(0, stop, deadline=time.monotonic() + 60)
    assert spent.take_turn(study) is False and spent.window_ended is False  # the budget, not the window, ended it


def test_the_deadline_ends_a_wait_on_other_workers_trials(monkeypatch):
    """Every remaining trial runs on another worker: the waiting worker stops at its deadline instead of waiting
    for them (they finish on their own workers)."""
    monkeypatch.setattr(budget, "WAIT_POLL_S", 0.05)
    study = optuna.create_study()
    _add(study, TrialState.COMPLETE, [1.0])
    study.ask()  # another worker's trial: the last one of a budget of 2
    b = StudyBudget(2, threading.Event(), deadline=time.monotonic() + 0.3)
    t0 = time.monotonic()
    assert b.take_turn(study) is False and b.window_ended is True
    assert 0.25 <= time.monotonic() - t0 < 5.0
