"""Pareto selection, hypervolume, export choice and status summary on trials made with Optuna's own API."""

from __future__ import annotations

import datetime as dt
import random

import optuna
import pytest

from tuner.analysis.pareto import (
    export_choice,
    hypervolume,
    pareto_front,
    reference_point,
    status_summary,
    workers_seen,
)
from tuner.storage.constraints import set_trial_constraint

optuna.logging.set_verbosity(optuna.logging.WARNING)
NAMES = ["val_ppl", "peak_vram_gib"]
DIST = {"x": optuna.distributions.FloatDistribution(0, 1)}


def add(study, values, constraint=None, state=optuna.trial.TrialState.COMPLETE, **user_attrs):
    ft = optuna.trial.create_trial(
        state=state,
        values=values if state.name == "COMPLETE" else None,
        params={"x": 0.5},
        distributions=DIST,
        user_attrs=user_attrs,
    )
    if constraint is not None:
        set_trial_constraint(ft, constraint)
    study.add_trial(ft)


def mo_study(directions=("minimize", "minimize")):
    return optuna.create_study(directions=list(directions))


def test_front_matches_optunas_constrained_best_trials():
    rng = random.Random(0)
    study = mo_study()
    for _ in range(60):
        ppl, vram = rng.uniform(10, 100), rng.uniform(1, 12)
        add(study, [ppl, vram], constraint=vram - 8.0)
    ours = [t.number for t in pareto_front(study.get_trials(), ["minimize", "minimize"])]
    assert ours == sorted(t.number for t in study.best_trials)  # Optuna's front with constraints considered
    assert ours and all(study.get_trials()[n].values[1] <= 8.0 for n in ours)


def test_front_respects_maximize_and_skips_infeasible_and_unfinished():
    study = mo_study(("minimize", "maximize"))
    add(study, [10.0, 100.0], constraint=-1)  # 0: on the front
    add(study, [20.0, 200.0], constraint=-1)  # 1: on the front (faster)
    add(study, [15.0, 50.0], constraint=-1)  # 2: dominated by 0
    add(study, [1.0, 1000.0], constraint=2.0)  # 3: would dominate all, but infeasible
    add(study, None, state=optuna.trial.TrialState.PRUNED)  # 4
    add(study, None, state=optuna.trial.TrialState.FAIL)  # 5
    assert [t.number for t in pareto_front(study.get_trials(), ["minimize", "maximize"])] == [0, 1]


def test_hypervolume_hand_computed():
    study = mo_study()
    for v in ([1.0, 4.0], [2.0, 2.0], [4.0, 1.0], [4.5, 4.5]):
        add(study, v, constraint=-1)
    front = pareto_front(study.get_trials(), ["minimize", "minimize"])
    # staircase under reference (5, 5): 4*1 + 3*2 + 1*1 = 11
    assert hypervolume(front, ["minimize", "minimize"], [5.0, 5.0]) == pytest.approx(11.0)
    # a point outside the reference box adds nothing, an empty front is 0, no reference -> None
    assert hypervolume(front, ["minimize", "minimize"], [3.0, 5.0]) == pytest.approx(2 * 1 + 1 * 2)
    assert hypervolume([], ["minimize", "minimize"], [5.0, 5.0]) == 0.0
    assert hypervolume(front, ["minimize", "minimize"], None) is None


def test_hypervolume_maximize_is_negated():
    study = mo_study(("minimize", "maximize"))
    add(study, [2.0, 10.0], constraint=-1)
    front = pareto_front(study.get_trials(), ["minimize", "maximize"])
    ref = reference_point(["val_ppl", "tokens_per_s"], ["minimize", "maximize"], vocab_size=6, ceiling_gib=None)
    assert ref == [6.0, 0.0]
    assert hypervolume(front, ["minimize", "maximize"], ref) == pytest.approx((6 - 2) * 10)


def test_reference_point_is_vocab_and_ceiling():
    assert reference_point(NAMES, ["minimize", "minimize"], vocab_size=2048, ceiling_gib=8.0) == [2048.0, 8.0]
    assert reference_point(NAMES, ["minimize", "minimize"], vocab_size=None, ceiling_gib=8.0) is None


def test_export_choice_lowest_ppl_under_budget():
    study = mo_study()
    add(study, [30.0, 2.0], constraint=-6)  # 0
    add(study, [20.0, 5.0], constraint=-3)  # 1
    add(study, [15.0, 7.5], constraint=-0.5)  # 2
    add(study, [10.0, 9.0], constraint=1.0)  # 3: infeasible (over the 8 GiB ceiling)
    trials = study.get_trials()
    pick = lambda x: export_choice(trials, NAMES, ["minimize", "minimize"], x)
    assert pick(8.0).number == 2
    assert pick(6.0).number == 1
    assert pick(5.0).number == 1  # boundary included
    assert pick(1.0) is None
    assert pick(100.0).number == 2  # never the infeasible trial 3


def test_status_summary_counts_workers_best_hv():
    study = mo_study()
    add(study, [30.0, 2.0], constraint=-6, end_reason="complete", worker="w1")
    add(study, [20.0, 9.0], constraint=1.0, end_reason="vram_ceiling", worker="w1")
    add(study, None, state=optuna.trial.TrialState.PRUNED, end_reason="numerical_instability", worker="w2")
    add(study, None, state=optuna.trial.TrialState.FAIL, end_reason="error", worker="w2")
    study.enqueue_trial({"x": 0.1})
    trials = study.get_trials()
    now = max(t.datetime_start for t in trials if t.datetime_start) + dt.timedelta(seconds=10)
    s = status_summary(trials, NAMES, ["minimize", "minimize"], vocab_size=100, ceiling_gib=8.0, now=now)
    assert s["n_trials"] == 5
    assert s["by_state"] == {"COMPLETE": 2, "FAIL": 1, "PRUNED": 1, "WAITING": 1}
    assert s["by_end_reason"] == {"complete": 1, "error": 1, "numerical_instability": 1, "vram_ceiling": 1}
    assert (s["feasible"], s["infeasible"], s["pareto_size"]) == (1, 1, 1)
    assert s["best_feasible"]["val_ppl"] == {"trial": 0, "value": 30.0}
    assert s["hypervolume"] == pytest.approx((100 - 30) * (8 - 2))
    assert [w["worker"] for w in s["workers"]] == ["w1", "w2"] and all(w["alive"] for w in s["workers"])


def test_workers_gone_after_silence_and_heartbeat_keeps_alive():
    study = mo_study()
    add(study, [1.0, 1.0], constraint=-1, worker="old")
    add(study, None, state=optuna.trial.TrialState.RUNNING, worker="busy")
    trials = study.get_trials()
    later = max(t.datetime_start for t in trials) + dt.timedelta(hours=2)
    running = [t for t in trials if t.state.name == "RUNNING"][0]
    rows = {r["worker"]: r for r in workers_seen(trials, now=later, heartbeat_age_s={running._trial_id: 12.0})}
    assert rows["old"]["alive"] is False and rows["old"]["last_seen_s"] > 7000
    assert rows["busy"]["alive"] is True and rows["busy"]["running"] == [1] and rows["busy"]["last_seen_s"] == 12.0


def test_worker_states_alive_stale_stopped():
    study = mo_study()
    now = dt.datetime.now()
    add(study, [10.0, 1.0], constraint=-1, worker="done")  # finished a trial just now, then exited cleanly
    add(study, [11.0, 1.0], constraint=-1, worker="killed")  # silent for an hour, no exit record
    running = study.ask()
    running.set_user_attr("worker", "busy")
    trials = study.get_trials()
    later = now + dt.timedelta(hours=1)
    exits = {"done": {"reason": "done", "at": later}, "never_ran": {"reason": "interrupted", "at": later}}
    beats = {running._trial_id: 5.0}
    rows = {r["worker"]: r for r in workers_seen(trials, now=later, heartbeat_age_s=beats, exits=exits)}
    assert {k: r["state"] for k, r in rows.items()} == {
        "done": "stopped", "killed": "stale", "busy": "alive", "never_ran": "stopped",
    }  # fmt: skip
    assert rows["done"]["exit"]["reason"] == "done" and rows["busy"]["running"] == [trials[-1].number]
    # an exit record older than the worker's latest trial start is a previous run of the same id: not stopped
    old = {"done": {"reason": "done", "at": now - dt.timedelta(days=1)}}
    soon = now + dt.timedelta(seconds=10)
    assert {r["worker"]: r["state"] for r in workers_seen(trials, now=soon, exits=old)}["done"] == "alive"


def test_the_inference_study_has_a_reference_point_a_front_and_an_export():
    names = ["val_ppl", "eval_tokens_per_s", "eval_peak_gib"]
    directions = ["minimize", "maximize", "minimize"]
    study = mo_study(directions)
    add(study, [30.0, 9000.0, 0.02], constraint=-0.5, peak_vram_gib=0.4)  # 0: fast float
    add(study, [31.0, 7000.0, 0.01], constraint=-0.5, peak_vram_gib=0.4)  # 1: smaller LNS
    add(study, [32.0, 6000.0, 0.03], constraint=-0.5, peak_vram_gib=0.4)  # 2: dominated by 0
    trials = study.get_trials()
    ref = reference_point(names, directions, vocab_size=2048, ceiling_gib=1.0)
    assert ref == [2048.0, 0.0, 1.0]
    front = pareto_front(trials, directions)
    assert [t.number for t in front] == [0, 1]
    assert hypervolume(front, directions, ref) > 0
    # the export budget reads the training peak, recorded as a user attr where it is not an objective
    assert export_choice(trials, names, directions, 0.5).number == 0
    assert export_choice(trials, names, directions, 0.3) is None
