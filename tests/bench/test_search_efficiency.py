"""bench/search_efficiency.py on small real Optuna studies (in memory, trials made with Optuna's public API): the
shared hypervolume reference, the TPE/random comparison, the learning-curve pruning replay and the broken run's
summary; then the script itself on the committed H100 data."""

from __future__ import annotations

import datetime as dt
import json

import optuna
import pytest

from bench import search_efficiency as se
from tuner.study.spec import LearningCurvePruning

T0 = dt.datetime(2026, 1, 1)
VOCAB = 1000
CEILING = 8.0


def _study(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials as an in-memory study stores and returns them."""
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.set_metric_names(list(se.METRICS))
    for t in trials:
        study.add_trial(t)
    return study.get_trials(deepcopy=False)


def _trial(
    ppl: float, gib: float, *, over: float = -1.0, start_s: float = 0.0, end_s: float = 1.0, **user_attrs: object
) -> optuna.trial.FrozenTrial:
    t = optuna.trial.create_trial(
        values=[ppl, gib], constraints={"vram_ceiling": over}, user_attrs={"end_reason": "complete", **user_attrs}
    )
    t.datetime_start, t.datetime_complete = T0 + dt.timedelta(seconds=start_s), T0 + dt.timedelta(seconds=end_s)
    return t


# --- hypervolume comparison -----------------------------------------------------------------------------------------


def test_shared_reference_is_the_worst_learned_feasible_ppl_times_the_margin_and_the_ceiling():
    a = _study([_trial(50.0, 4.0), _trial(VOCAB, 9.0, over=1.0, end_reason="vram_ceiling")])
    b = _study([_trial(80.0, 5.0), _trial(3e10, 5.0)])  # a diverged trial: feasible, but learned nothing
    ref = se.shared_reference([a, b], CEILING, VOCAB)
    assert ref["point"] == pytest.approx([se.PPL_MARGIN * 80.0, CEILING])
    with pytest.raises(ValueError):
        se.shared_reference([_study([_trial(VOCAB, 4.0)])], CEILING, VOCAB)


def test_hypervolume_comparison_by_hand():
    ref = [100.0, 8.0]
    # TPE-like: one point (50, 4) -> (100 - 50) * (8 - 4) = 200. Its infeasible trial adds nothing.
    tpe = _study([_trial(VOCAB, 9.0, over=1.0, trial_wall_s=1.0), _trial(50.0, 4.0, trial_wall_s=10.0)])
    # random-like: (60, 6) first, then (50, 4) and (20, 6): 200 + (50 - 20) * (8 - 6) = 260.
    rand = _study([_trial(60.0, 6.0), _trial(50.0, 4.0), _trial(20.0, 6.0)])
    assert se.front_hv(tpe, ref) == pytest.approx(200.0)
    assert se.front_hv(rand, ref) == pytest.approx(260.0)
    curve = se.hv_curve(rand, ref)
    assert [p["hypervolume"] for p in curve] == pytest.approx([80.0, 200.0, 260.0])  # (50, 4) dominates (60, 6)
    assert [p["n_trials"] for p in se.hv_curve(tpe, ref)] == [1, 2]
    assert se.hv_curve(tpe, ref)[-1]["trial_wall_s"] == pytest.approx(11.0)
    assert se.study_summary(rand, 2, ref)["hypervolume"] == pytest.approx(200.0)


def test_sampler_comparison_shares_one_reference_and_counts_trials_to_match():
    tpe = _study([_trial(50.0, 4.0, trial_wall_s=2.0, phase_s={"train": 1.5, "eval": 0.25, "report": 9.0})])
    rand = _study([_trial(60.0, 6.0), _trial(90.0, 3.0), _trial(40.0, 4.0)])
    out = se.sampler_comparison(tpe, rand, CEILING, VOCAB)
    point = [out["reference_point"][k] for k in se.METRICS]
    assert point == pytest.approx([99.0, CEILING])  # 1.1 x the worst feasible PPL (90) over both studies
    assert out["tpe"]["hypervolume"] == pytest.approx(se.front_hv(tpe, point))
    assert out["tpe_over_random_all"] == pytest.approx(out["tpe"]["hypervolume"] / out["random_all"]["hypervolume"])
    assert out["random_trials_to_reach_tpe_hv"] == 3  # only (40, 4) beats TPE's single point
    assert out["tpe"]["gpu_time_s"] == pytest.approx({"trial_wall_s": 2.0, "train_eval_s": 1.75})


# --- learning-curve pruning replay ----------------------------------------------------------------------------------

BUDGET = 1600
SETTINGS = LearningCurvePruning(enabled=False, min_fraction=0.25, confidence=0.9)  # the replay turns it on


def _curve(scale: float, final: float | None = None) -> list[dict[str, float]]:
    """PPL = scale * (tokens / 100)^-0.5 at 100..1600 tokens (final: the last point's PPL instead)."""
    pts = [{"tokens": n, "val_loss": 0.0, "val_ppl": scale * (n / 100) ** -0.5} for n in (100, 200, 400, 800, 1600)]
    if final is not None:
        pts[-1]["val_ppl"] = final
    return pts


def _trained(scale: float, gib: float, *, start_s: float, end_s: float, final: float | None = None):
    curve = _curve(scale, final)
    return _trial(
        curve[-1]["val_ppl"],
        gib,
        start_s=start_s,
        end_s=end_s,
        curve=curve,
        curve_budget_tokens=BUDGET,
        tokens_per_s=100.0,
        train_time_s=16.0,
    )


def _refs() -> list[optuna.trial.FrozenTrial]:
    # Three finished curves (MIN_REFERENCES), all exponent -0.5, final PPL 250 at 4 GiB; they end at t = 10 s.
    return [_trained(1000.0, 4.0, start_s=0, end_s=10) for _ in range(3)]


def test_replay_prunes_a_dominated_curve_at_the_first_decision_and_counts_the_savings():
    # 4x worse all along at 5 GiB: at 400 tokens (>= 1/4 of 1600) its optimistic final PPL (1000) is dominated.
    bad = _trained(4000.0, 5.0, start_s=20, end_s=30)
    leaner = _trained(4000.0, 3.0, start_s=20, end_s=30)  # as bad, but less memory than any front point: kept
    trials = _study([*_refs(), bad, leaner])
    rep = se.replay_pruning(trials, SETTINGS, BUDGET)
    assert rep["pruned"] == [3]
    rec = rep["trials"][3]
    assert rec["pruned_at_tokens"] == 400 and rec["method"] == "late_alpha"
    assert rec["optimistic_ppl"] == pytest.approx(1000.0)
    assert rec["tokens_saved"] == 1200 and rec["seconds_saved"] == pytest.approx(12.0)
    assert rep["train_tokens_saved_frac"] == pytest.approx(1200 / (5 * 1600))
    assert rep["train_seconds_saved_frac"] == pytest.approx(12.0 / (5 * 16.0))
    summary = se.replay_summary(trials, SETTINGS, BUDGET, VOCAB, CEILING)
    assert summary["hypervolume"]["data"]["hv_loss_frac"] == pytest.approx(0.0)
    assert summary["pruned_on_full_front"] == []
    assert summary["meets_goal"] is False  # 15 % saved < 40 %


def test_replay_as_worker_sees_only_trials_complete_when_it_started():
    early = _trained(4000.0, 5.0, start_s=5, end_s=30)  # started before the references finished: empty front
    trials = _study([*_refs(), early])
    assert se.replay_pruning(trials, SETTINGS, BUDGET, order="start")["pruned"] == []
    assert se.replay_pruning(trials, SETTINGS, BUDGET, order="sequential")["pruned"] == [3]


def test_replay_counts_the_hypervolume_of_a_wrong_prune():
    # 1 % above the references' track until 400 tokens (pruned: dominated at the same GiB), but
    # it would have ended at PPL 200 < 250: the front without it is smaller.
    late_bloomer = _trained(1010.0, 4.0, start_s=20, end_s=30, final=200.0)
    trials = _study([*_refs(), late_bloomer])
    summary = se.replay_summary(trials, SETTINGS, BUDGET, VOCAB, CEILING)
    assert summary["pruned"] == [3] and summary["pruned_on_full_front"] == [3]
    hv = summary["hypervolume"]["data"]
    ref_ppl = se.PPL_MARGIN * 250.0
    assert hv["hv_full"] == pytest.approx((ref_ppl - 200.0) * (CEILING - 4.0))
    assert hv["hv_without_pruned"] == pytest.approx((ref_ppl - 250.0) * (CEILING - 4.0))
    assert hv["hv_loss_frac"] == pytest.approx(1 - 25.0 / 75.0)


def test_replay_leaves_out_trials_that_never_trained_to_the_end():
    infeasible = _trial(VOCAB, 9.0, over=1.0, end_reason="vram_ceiling")
    reference = _trained(1000.0, 4.0, start_s=0, end_s=10)
    reference.user_attrs["reference"] = "dense"
    assert [t.number for t in se.replay_candidates(_study([infeasible, reference, *_refs()]))] == [2, 3, 4]


# --- the broken live run --------------------------------------------------------------------------------------------


def test_live_run_state_counts_states_reasons_and_errors():
    err = "RuntimeError: A single direction cannot be retrieved from a multi-objective study."
    pruned = optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED,
        user_attrs={"end_reason": "learning_curve"},
        intermediate_values={100: 9.0, 400: 8.0},
    )
    failed = [
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL, user_attrs={"end_reason": "error", "error_summary": err}
        )
        for _ in range(2)
    ]
    state = se.live_run_state(_study([_trial(50.0, 4.0), pruned, *failed]))
    assert state["by_state"] == {"COMPLETE": 1, "FAIL": 2, "PRUNED": 1}
    assert state["by_end_reason"] == {"complete": 1, "error": 2, "learning_curve": 1}
    assert state["errors"] == [{"error_summary": err, "trials": 2}]
    assert state["first_failed_trial"] == 2
    assert state["curve_pruned"] == [{"number": 1, "stopped_at_tokens": 400}]


# --- the script on the committed data -------------------------------------------------------------------------------


def test_script_on_the_committed_h100_data(tmp_path):
    out = tmp_path / "se.json"
    assert se.main(["--out", str(out)]) == 0
    res = json.loads(out.read_text())
    sc = res["sampler_comparison"]
    assert sc["tpe"]["n_trials"] == 30 and sc["random_all"]["n_trials"] == 60
    assert sc["reference_point"]["peak_vram_gib"] == CEILING
    rp = res["pruning_replay"]
    assert rp["kind"] == "replay" and rp["settings"]["min_fraction"] == 0.25 and rp["settings"]["confidence"] == 0.9
    for order in ("as_worker", "sequential"):
        assert rp[order]["n_replayed"] == 64
        saved, loss = rp[order]["train_tokens_saved_frac"], rp[order]["hypervolume"]["data"]["hv_loss_frac"]
        assert rp[order]["meets_goal"] == (saved >= 0.40 and loss <= 0.02)
    assert res["live_pruning_run"]["by_end_reason"]["error"] == 16
    assert "not_measured" in res["live_pruning_run"]
