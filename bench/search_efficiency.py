"""Search efficiency of the H100 study data (issue 18 part 2): TPE against random sampling by hypervolume, and a
replay of learning-curve pruning over the 8 GiB study's recorded curves. No GPU: it reads the studies' SQLite files.

    python bench/search_efficiency.py            # the files under bench/results/search_efficiency/
    python bench/search_efficiency.py --dir DIR --out FILE.json

Writes bench/results/search_efficiency.json:

  sampler_comparison   s_tpe30 (TPE, first 30 trials) against s_rand60 (random, 60 and its first 30): hypervolume of
                       the feasible (val_ppl, peak_vram_gib) front against ONE reference point shared by both
                       (`shared_reference`), HV against trial count (number order: the sampler's), GPU time spent.
  pruning_replay       the 8 GiB study's complete trials, replayed in trial order through the repo's own
                       LearningCurveMonitor with the study file's pruning settings as if pruning had been on: which
                       trials it would have stopped and where, the training tokens and seconds saved, the hypervolume
                       lost. A REPLAY: live, the sampler would have chosen other trials after the first prune.
  live_pruning_run     the state of s_tpe30_pruned as recorded (it broke; the live comparison was not measured).

Feasible = every constraint <= 0 (tuner.analysis.pareto.feasible_complete); infeasible trials are COMPLETE with
val_ppl = vocab_size and never enter a front or a hypervolume.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner.analysis.curve_monitor import LearningCurveMonitor, LearningCurvePrune
from tuner.analysis.pareto import feasible_complete, hypervolume, pareto_front
from tuner.storage.trial_attrs import is_reference, trial_attr

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench" / "results" / "search_efficiency"
MAIN_DB = REPO / "bench" / "results" / "study_8gb" / "study_8gb.db"  # the 8 GiB study, committed once, there
OUT = REPO / "bench" / "results" / "search_efficiency.json"
STUDY_FILE = REPO / "studies" / "phase1_8gb.yaml"
METRICS = ("val_ppl", "peak_vram_gib")
DIRECTIONS = ("minimize", "minimize")
PPL_MARGIN = 1.1  # the reference's val_ppl: the worst feasible val_ppl over the compared studies x this
GOAL_SAVED_FRAC, GOAL_HV_LOSS_FRAC = 0.40, 0.02  # issue 18's goal for learning-curve pruning


# --- hypervolume against a shared reference -------------------------------------------------------------------------


def shared_reference(studies: Sequence[Sequence[Any]], ceiling_gib: float, vocab_size: int) -> dict[str, Any]:
    """One reference point for several studies, in (val_ppl, peak_vram_gib).

    val_ppl: PPL_MARGIN x the worst feasible val_ppl below `vocab_size` over all the studies, capped at vocab_size.
    The worst value, not the uniform model's PPL (vocab_size, 50257): the fronts spread over a few hundred PPL, and
    a box 50257 wide would make any two fronts look alike. Below vocab_size: a feasible trial at or above the
    uniform model's PPL learned nothing (a diverged run, e.g. 3e10) and would stretch the box by orders of
    magnitude; such a trial lies outside the box and adds nothing. peak_vram_gib: the ceiling (no feasible trial
    exceeds it). Raises ValueError when no study has a feasible trial below vocab_size."""
    learned = [float(t.values[0]) for trials in studies for t in feasible_complete(trials)]
    learned = [v for v in learned if v < vocab_size]
    if not learned:
        raise ValueError("shared_reference: no feasible complete trial below the uniform model's PPL")
    worst = max(learned)
    return {
        "point": [min(PPL_MARGIN * worst, float(vocab_size)), float(ceiling_gib)],
        "rule": f"val_ppl: {PPL_MARGIN} x the worst feasible val_ppl below the vocabulary size {vocab_size} over "
        f"the compared studies ({worst:.1f}), capped at {vocab_size}; peak_vram_gib: the VRAM ceiling",
    }


def front_hv(trials: Sequence[Any], reference: Sequence[float]) -> float:
    """Hypervolume of the feasible Pareto front of `trials` (tuner.analysis.pareto, Optuna's exact algorithm)."""
    hv = hypervolume(pareto_front(trials, DIRECTIONS), DIRECTIONS, list(reference))
    assert hv is not None  # a reference was given
    return hv


def phase_s(trial: Any, *names: str) -> float:
    """Sum of the named phases of the trial's `phase_s` user attr (seconds; a missing phase counts 0)."""
    phases = trial.user_attrs.get("phase_s") or {}
    return float(sum(float(phases.get(n) or 0.0) for n in names))


def gpu_time(trials: Sequence[Any]) -> dict[str, float]:
    """Seconds of trial time: sum of trial_wall_s (the child's request-to-outcome time; 0 for a trial never sent to
    the GPU) and of the train + eval phases."""
    return {
        "trial_wall_s": sum(float(t.user_attrs.get("trial_wall_s") or 0.0) for t in trials),
        "train_eval_s": sum(phase_s(t, "train", "eval") for t in trials),
    }


def hv_curve(trials: Sequence[Any], reference: Sequence[float]) -> list[dict[str, float]]:
    """Hypervolume after the first n trials (by trial number) for n = 1..len(trials), with the GPU time used so far
    (cumulative trial_wall_s)."""
    ordered = sorted(trials, key=lambda t: t.number)
    out, wall = [], 0.0
    for n, t in enumerate(ordered, start=1):
        wall += float(t.user_attrs.get("trial_wall_s") or 0.0)
        out.append({"n_trials": n, "hypervolume": front_hv(ordered[:n], reference), "trial_wall_s": wall})
    return out


def study_summary(trials: Sequence[Any], n: int, reference: Sequence[float]) -> dict[str, Any]:
    """The first `n` trials (by number) of a study: counts, front, hypervolume, GPU time, study wall time."""
    first = sorted(trials, key=lambda t: t.number)[:n]
    front = pareto_front(first, DIRECTIONS)
    starts = [t.datetime_start for t in first if t.datetime_start is not None]
    ends = [t.datetime_complete for t in first if t.datetime_complete is not None]
    return {
        "n_trials": len(first),
        "by_end_reason": dict(sorted(Counter(str(t.user_attrs.get("end_reason")) for t in first).items())),
        "feasible": len(feasible_complete(first)),
        "pareto_size": len(front),
        "front": [{"number": t.number, "val_ppl": t.values[0], "peak_vram_gib": t.values[1]} for t in front],
        "best_feasible_val_ppl": min((t.values[0] for t in feasible_complete(first)), default=None),
        "hypervolume": front_hv(first, reference),
        "gpu_time_s": gpu_time(first),
        "first_start_to_last_end_s": (max(ends) - min(starts)).total_seconds() if starts and ends else None,
    }


def sampler_comparison(tpe: Sequence[Any], rand: Sequence[Any], ceiling_gib: float, vocab_size: int) -> dict[str, Any]:
    """TPE after its first 30 trials against random after 30 and after all of its trials (60 here)."""
    ref = shared_reference([tpe, rand], ceiling_gib, vocab_size)
    point = ref["point"]
    n_tpe = min(30, len(tpe))
    out: dict[str, Any] = {
        "reference_point": {"val_ppl": point[0], "peak_vram_gib": point[1], "rule": ref["rule"]},
        "tpe": study_summary(tpe, n_tpe, point),
        "random_30": study_summary(rand, min(30, len(rand)), point),
        "random_all": study_summary(rand, len(rand), point),
        "hv_curve": {"tpe": hv_curve(tpe, point), "random": hv_curve(rand, point)},
    }
    hv_t, hv_r30, hv_rall = (out[k]["hypervolume"] for k in ("tpe", "random_30", "random_all"))
    out["tpe_over_random_30"] = hv_t / hv_r30 if hv_r30 > 0 else None
    out["tpe_over_random_all"] = hv_t / hv_rall if hv_rall > 0 else None
    # The first trial count at which random's curve reaches TPE's final hypervolume (None: it never does).
    out["random_trials_to_reach_tpe_hv"] = next(
        (p["n_trials"] for p in out["hv_curve"]["random"] if p["hypervolume"] >= hv_t), None
    )
    return out


# --- learning-curve pruning replay ----------------------------------------------------------------------------------


def replay_candidates(trials: Sequence[Any]) -> list[Any]:
    """Trials the replay can re-decide: COMPLETE Phase 1 trials that trained to the end (end_reason complete) with a
    recorded curve. Infeasible and interrupted trials never reached a curve-pruning decision."""
    return sorted(
        (
            t
            for t in trials
            if t.state.name == "COMPLETE"
            and t.user_attrs.get("end_reason") == "complete"
            and not is_reference(t)
            and trial_attr(t, "curve")
        ),
        key=lambda t: t.number,
    )


def _visible(done: Any, trial: Any, order: str) -> bool:
    if order == "sequential":
        return bool(done.number < trial.number)
    # "start": the worker builds a trial's pruning request (front, reference curves) once, when the trial starts
    # (tuner.trial.objective._pruning_request), from the trials complete by then.
    return (
        done.datetime_complete is not None
        and trial.datetime_start is not None
        and done.datetime_complete <= trial.datetime_start
    )


def replay_pruning(trials: Sequence[Any], settings: Any, budget_tokens: int, order: str = "start") -> dict[str, Any]:
    """Replay the learning-curve rule over recorded curves, trial by trial in number order.

    settings: the study's `pruning.learning_curve` (min_fraction, confidence; `enabled` is forced on).
    order: which earlier trials a trial's decision sees: "start" (those complete when it started, by the recorded
    timestamps: what the worker does) or "sequential" (every lower-numbered one: as if one worker ran the study).
    A trial the replay prunes leaves the front and the reference curves of later trials, as a live prune would.
    The trial's final peak_vram_gib stands in for the guard's peak so far at the decision (the peak comes in the
    first steps, so the two are close; a larger peak can only make a prune more likely).
    Returns per-trial decisions, tokens and seconds saved, and the pruned set."""
    on = dataclasses.replace(settings, enabled=True)
    candidates = replay_candidates(trials)
    kept: list[Any] = []
    records = []
    for t in candidates:
        seen = [d for d in kept if _visible(d, t, order)]
        front = [(float(d.values[0]), float(d.values[1])) for d in feasible_complete(seen)]
        refs = [
            trial_attr(d, "curve")
            for d in seen
            if int(d.user_attrs.get("curve_budget_tokens", budget_tokens)) == budget_tokens
        ]
        peak = float(t.values[1])
        monitor = LearningCurveMonitor(on, budget_tokens, front, functools.partial(float, peak), reference_curves=refs)
        curve = trial_attr(t, "curve")
        final_tokens = int(curve[-1]["tokens"])
        rec: dict[str, Any] = {
            "number": t.number,
            "final_val_ppl": float(t.values[0]),
            "peak_vram_gib": peak,
            "front_size_seen": len(front),
            "reference_curves_seen": len(refs),
            "trained_tokens": final_tokens,
            "pruned_at_tokens": None,
        }
        try:
            for p in curve:
                monitor.on_eval(SimpleNamespace(**p))
        except LearningCurvePrune as e:
            tps = float(t.user_attrs.get("tokens_per_s") or 0.0)
            saved = final_tokens - int(p["tokens"])
            rec.update(
                pruned_at_tokens=int(p["tokens"]),
                pruned_at_frac=int(p["tokens"]) / final_tokens,
                optimistic_ppl=e.prediction.optimistic_ppl,
                predicted_ppl=e.prediction.mean_ppl,
                method=e.prediction.method,
                tokens_saved=saved,
                seconds_saved=saved / tps if tps > 0 else None,
            )
        else:
            kept.append(t)
        records.append(rec)
    pruned = [r for r in records if r["pruned_at_tokens"] is not None]
    total_tokens = sum(r["trained_tokens"] for r in records)
    saved_tokens = sum(r["tokens_saved"] for r in pruned)
    train_s = sum(float(t.user_attrs.get("train_time_s") or 0.0) for t in candidates)
    saved_s = sum(r["seconds_saved"] or 0.0 for r in pruned)
    return {
        "order": order,
        "n_replayed": len(records),
        "n_pruned": len(pruned),
        "pruned": [r["number"] for r in pruned],
        "train_tokens_total": total_tokens,
        "train_tokens_saved": saved_tokens,
        "train_tokens_saved_frac": saved_tokens / total_tokens if total_tokens else None,
        "train_time_s_total": train_s,
        "train_seconds_saved": saved_s,
        "train_seconds_saved_frac": saved_s / train_s if train_s > 0 else None,
        "trials": records,
    }


def replay_summary(
    trials: Sequence[Any], settings: Any, budget_tokens: int, vocab_size: int, ceiling_gib: float, order: str = "start"
) -> dict[str, Any]:
    """`replay_pruning` plus the hypervolume lost (front without the pruned trials against the full front) under the
    data-derived reference (`shared_reference`, this study alone; the goal's) and the repo's standard one (vocab,
    ceiling: tuner.analysis.pareto.reference_point), and whether the issue's goal holds."""
    rep = replay_pruning(trials, settings, budget_tokens, order)
    phase1 = [t for t in trials if not is_reference(t)]
    without = [t for t in phase1 if t.number not in set(rep["pruned"])]
    full_front = {t.number for t in pareto_front(phase1, DIRECTIONS)}
    refs = {
        "data": shared_reference([phase1], ceiling_gib, vocab_size)["point"],
        "vocab_ceiling": [float(vocab_size), ceiling_gib],
    }
    hv = {}
    for name, point in refs.items():
        full, kept = front_hv(phase1, point), front_hv(without, point)
        hv[name] = {
            "reference_point": point,
            "hv_full": full,
            "hv_without_pruned": kept,
            "hv_loss_frac": 1.0 - kept / full if full > 0 else None,
        }
    saved, loss = rep["train_tokens_saved_frac"], hv["data"]["hv_loss_frac"]
    return {
        **{k: v for k, v in rep.items() if k != "trials"},
        "pruned_on_full_front": sorted(full_front & set(rep["pruned"])),
        "hypervolume": hv,
        "meets_goal": bool(
            saved is not None and loss is not None and saved >= GOAL_SAVED_FRAC and loss <= GOAL_HV_LOSS_FRAC
        ),
        "trials": rep["trials"],
    }


# --- the broken live run --------------------------------------------------------------------------------------------


def live_run_state(trials: Sequence[Any]) -> dict[str, Any]:
    """Counts by state and end reason, the errors recorded (error_summary user attr, with how many trials), the
    curve-pruned trials and where they stopped (their last intermediate value's step = training tokens)."""
    errors = Counter(str(t.user_attrs.get("error_summary")) for t in trials if t.state.name == "FAIL")
    failed = sorted(t.number for t in trials if t.state.name == "FAIL")
    pruned = [
        {"number": t.number, "stopped_at_tokens": max(t.intermediate_values, default=None)}
        for t in trials
        if t.user_attrs.get("end_reason") == "learning_curve"
    ]
    return {
        "n_trials": len(trials),
        "by_state": dict(sorted(Counter(t.state.name for t in trials).items())),
        "by_end_reason": dict(sorted(Counter(str(t.user_attrs.get("end_reason")) for t in trials).items())),
        "errors": [{"error_summary": e, "trials": n} for e, n in errors.most_common()],
        "first_failed_trial": failed[0] if failed else None,
        "curve_pruned": pruned,
    }


def load(db: Path, name: str) -> tuple[list[Any], dict[str, Any]]:
    """(trials, study user attrs) of study `name` in the SQLite file `db`; checks the objectives are METRICS."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    if tuple(study.metric_names or METRICS) != METRICS:
        raise ValueError(f"{db}:{name}: objectives {study.metric_names}, expected {METRICS}")
    return study.get_trials(deepcopy=False), dict(study.user_attrs)


def build(data_dir: Path, study_file: Path) -> dict[str, Any]:
    from tuner.study.loader import load_spec

    spec = load_spec(study_file)
    tpe, tpe_attrs = load(data_dir / "tpe30.db", "s_tpe30")
    rand, rand_attrs = load(data_dir / "rand60.db", "s_rand60")
    live, _ = load(data_dir / "tpe30p.db", "s_tpe30_pruned")
    main, main_attrs = load(MAIN_DB, spec.name)
    ceilings = {float(a["vram_ceiling_gib"]) for a in (tpe_attrs, rand_attrs, main_attrs)}
    if len(ceilings) != 1:
        raise ValueError(f"the studies' ceilings differ: {ceilings}")
    ceiling = ceilings.pop()
    settings = spec.pruning  # the file's pruning.learning_curve section
    budget = int(spec.budget.train_tokens)
    vocab = int(spec.model["vocab_size"])
    budgets = {int(t.user_attrs["curve_budget_tokens"]) for t in tpe + rand if "curve_budget_tokens" in t.user_attrs}
    return {
        "source": {
            "data": str(data_dir.relative_to(REPO)) if data_dir.is_relative_to(REPO) else str(data_dir),
            "device": sorted({str(t.user_attrs["device"]) for t in tpe + rand + main if "device" in t.user_attrs}),
            "setup": "one study per H100 of one 4x H100 host, 3 workers per GPU, run at the same time; step eager",
        },
        "sampler_comparison": {
            "budget": f"{sorted(budgets)} training tokens a trial, not the 8 GiB study's {budget}",
            "caveat": "one run (one seed) per sampler, so no spread; TPE's first 12 trials are its random start-up",
            **sampler_comparison(tpe, rand, ceiling, vocab),
        },
        "pruning_replay": {
            "kind": "replay",
            "caveat": "replayed over the recorded curves of a study run with pruning off: live, the sampler would "
            "have chosen different trials after the first prune, and a pruned trial frees its GPU sooner",
            "study": spec.name,
            "settings": {"min_fraction": settings.min_fraction, "confidence": settings.confidence},
            "budget_tokens": budget,
            "goal": {"train_tokens_saved_frac_min": GOAL_SAVED_FRAC, "hv_loss_frac_max": GOAL_HV_LOSS_FRAC},
            "seconds_note": "seconds saved = tokens not trained / the trial's measured tokens_per_s (training only; "
            "the skipped later evaluations would save more)",
            "as_worker": replay_summary(main, settings, budget, vocab, ceiling, "start"),
            "sequential": replay_summary(main, settings, budget, vocab, ceiling, "sequential"),
        },
        "live_pruning_run": {
            "study": "s_tpe30_pruned",
            "not_measured": "the live with/without-pruning comparison: after the first curve-pruned trial every "
            "later TPE ask raised (Optuna 5.0's TPE scores a pruned trial with intermediate values through "
            "study.direction, which a multi-objective study refuses). Fixed on main in 0e7d808 (a curve-pruned "
            "trial of a multi-objective study stores no intermediate values); not rerun",
            **live_run_state(live),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=DATA, help="folder with tpe30.db, rand60.db, tpe30p.db")
    p.add_argument("--study-file", type=Path, default=STUDY_FILE, help="the 8 GiB study's file (pruning settings)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    from bench._common import write_json

    res = build(args.dir.resolve(), args.study_file.resolve())
    write_json(args.out, res)
    sc = res["sampler_comparison"]
    print(f"reference point {sc['reference_point']['val_ppl']:.1f} PPL, {sc['reference_point']['peak_vram_gib']} GiB")
    for k in ("tpe", "random_30", "random_all"):
        print(f"{k:>10}: {sc[k]['n_trials']} trials, HV {sc[k]['hypervolume']:.1f}, GPU {sc[k]['gpu_time_s']}")
    for order in ("as_worker", "sequential"):
        rp = res["pruning_replay"][order]
        hv_loss = rp["hypervolume"]["data"]["hv_loss_frac"]
        print(
            f"replay ({order}): pruned {rp['n_pruned']}/{rp['n_replayed']}, tokens saved "
            f"{rp['train_tokens_saved_frac']:.3f}, HV lost {hv_loss:.4f}, goal met: {rp['meets_goal']}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
