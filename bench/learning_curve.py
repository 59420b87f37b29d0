"""Measure the learning-curve pruner: the same study run twice through the real service, without and with pruning.

    python bench/learning_curve.py --out DIR [--device cpu|cuda] [--trials 20] [--train-tokens 32768]
    python bench/learning_curve.py --out DIR --summarize-only     # recompute the JSON from the studies left in DIR

Both runs use the same search space, the same sampler (RandomSampler, fixed seed: the k-th trial of each run gets the
same parameters whatever happened before, so the two fronts differ only by what the pruner removed), the same data and
token budget, one worker each (tuner.trial.worker.run_worker: trial child process, real objective), on SQLite files under
DIR. Writes DIR/learning_curve.json:

  device, trials                  where it ran; trials per run
  gpu_time_saved_frac             1 - (sum of trial_wall_s with pruning) / (same without); trial_wall_s is the child's
                                  time from request to outcome (training + evaluations). On CPU it is wall time on
                                  the CPU, noisy when the machine is shared: train_tokens_saved_frac is the steady
                                  figure (tokens trained, pruned trials counted up to their last evaluation)
  hypervolume_with / _without     2-D hypervolume (val_ppl, peak_vram_gib; both minimised) of each run's feasible
                                  front against REF below (fixed here for both runs)
  hypervolume_loss_frac           1 - with / without
  median_pred_error_at_quarter    completed trials (of the no-pruning run when it recorded curves, else of the
                                  pruning run): the final PPL predicted from what the trial had seen at <= 1/4 of the
                                  budget by the monitor's late-alpha method (its own latest point, the other completed
                                  curves' late exponents, leave-one-out); median |pred - final| / final.
                                  `median_pred_error_at_quarter_own_fit`: the same with the trial's own power-law fit
  + extras: per-trial records, pruned configs that sit on the no-pruning front (wrong prunes), the prediction method
    the pruner used, the effective-rank predictor's leave-one-out error (log PPL linear in the early effective rank).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# `python bench/learning_curve.py` puts bench/ first on sys.path, where a script named after a package would shadow
# it in this process and in the trial children (spawn copies sys.path): bench/ leaves the path, the repo root leads.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from tuner.analysis.curve import (
    MIN_REFERENCES,
    fit_power_law,
    late_alphas,
    predict,
    predict_late_alpha,
    rank_predictor_error,
    relative_error,
)
from tuner.storage.trial_attrs import trial_attr

# Reference point of the hypervolume, fixed here for both runs: the uniform model's PPL (= vocabulary size; any model
# that learned anything beats it) and the study's VRAM ceiling (every feasible trial is under it). The ceiling is ~2x
# the largest peak (CPU tensor bytes) that configurations of this space reach, so the memory axis counts.
# On CUDA the memory objective is NVML's per-process figure, CUDA context included (~0.5 GiB), hence its own ceiling.
VOCAB = 512
CEILING_GIB = {"cpu": 0.004, "cuda": 4.0}
REF = {dev: (float(VOCAB), gib) for dev, gib in CEILING_GIB.items()}  # (val_ppl, peak_vram_gib)


# --- pure measurement ------------------------------------------------------------------------------------------------

def hypervolume_2d(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by `points` (both coordinates minimised) inside the box bounded by `ref`."""
    pts = sorted((p for p in points if p[0] < ref[0] and p[1] < ref[1]), key=lambda p: (p[0], p[1]))
    area, best_y = 0.0, ref[1]
    for i, (x, y) in enumerate(pts):
        if y >= best_y:
            continue
        next_x = ref[0]
        for x2, y2 in pts[i + 1:]:
            if y2 < y:
                next_x = x2
                break
        # strip from x to the next point that lowers the staircase; height ref_y - y
        area += (next_x - x) * (ref[1] - y)
        best_y = y
    return area


def _staircase_check() -> None:
    """Self-check of hypervolume_2d on a case worked by hand (the bench refuses to report if it fails)."""
    hv = hypervolume_2d([(1.0, 3.0), (2.0, 2.0), (3.0, 1.0), (2.5, 2.5)], (4.0, 4.0))
    assert abs(hv - 6.0) < 1e-12, hv


def feasible_front(trials: list[Any]) -> list[tuple[float, float]]:
    """(val_ppl, peak_vram_gib) of COMPLETE, feasible trials that finished training (end_reason complete)."""
    pts = []
    for t in trials:
        if t.state.name != "COMPLETE" or t.user_attrs.get("end_reason") != "complete" or not t.values:
            continue
        cons = t.system_attrs.get("constraints")
        if cons is not None and any(c > 0 for c in cons):
            continue
        pts.append((float(t.values[0]), float(t.values[1])))
    return [p for p in pts if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in pts)]


def quarter_errors(trials: list[Any], budget: int) -> list[dict[str, Any]]:
    """Prediction of the final PPL from what a completed trial had seen at 1/4 of the budget, two ways:
    own_fit: the power law through its own points at <= budget/4, extrapolated to the budget;
    late_alpha: its latest point at <= budget/4 carried to the budget with the late exponents of the run's OTHER
      completed curves (leave-one-out; what LearningCurveMonitor does once the study has >= MIN_REFERENCES)."""
    done = [t for t in trials if t.user_attrs.get("end_reason") == "complete" and t.values
            and len(trial_attr(t, "curve") or []) >= 3]
    out = []
    for t in done:
        pts = [p for p in trial_attr(t, "curve") if 0 < p["tokens"] <= budget / 4]
        if len({p["tokens"] for p in pts}) < 2:
            continue
        fit = fit_power_law([p["tokens"] for p in pts], [p["val_ppl"] for p in pts])
        own = predict(fit, budget, 0.9)
        final = float(t.values[0])
        rec = {"number": t.number, "n_points": len(pts), "final_ppl": final, "own_fit_ppl": own.mean_ppl,
               "own_fit_error": relative_error(own.mean_ppl, final), "alpha": fit.alpha, "r2": fit.r2,
               "early_rank": pts[-1].get("repr_effective_rank"), "late_alpha_ppl": None, "late_alpha_error": None}
        alphas = late_alphas([trial_attr(o, "curve") for o in done if o.number != t.number], pts[-1]["tokens"], budget)
        if len(alphas) >= MIN_REFERENCES:
            late = predict_late_alpha(pts[-1]["tokens"], pts[-1]["val_ppl"], budget, alphas, 0.9)
            rec.update(late_alpha_ppl=late.mean_ppl, late_alpha_error=relative_error(late.mean_ppl, final),
                       late_alpha_interval=[late.optimistic_ppl, late.pessimistic_ppl])
        out.append(rec)
    return out


def trained_tokens(t: Any, budget: int) -> int:
    """Training tokens a trial consumed: the budget when it finished, its last evaluation when it was pruned there."""
    if t.user_attrs.get("end_reason") == "complete":
        return budget
    curve = trial_attr(t, "curve") or []
    return int(curve[-1]["tokens"]) if curve else 0


def trial_seconds(t: Any) -> float:
    if t.datetime_start is None or t.datetime_complete is None:
        return 0.0
    return (t.datetime_complete - t.datetime_start).total_seconds()


# --- the study -------------------------------------------------------------------------------------------------------

def study_dict(name: str, pruning: bool, args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark study: a tiny CPU model, a search space whose corners differ in both PPL and memory (width,
    learning rate over 1.5 decades, ranks, checkpointing), a random sampler with a fixed seed."""
    return {
        "name": name,
        "objectives": [{"metric": "val_ppl", "direction": "minimize"},
                       {"metric": "peak_vram_gib", "direction": "minimize"}],
        "vram_ceiling_gib": CEILING_GIB[args.device],
        "sampler": {"name": "random", "seed": args.seed},
        "n_trials": args.trials,
        "model": {"vocab_size": VOCAB, "n_layers": 1, "n_seq": args.n_seq, "batch_size": args.batch_size,
                  "dtype": "float32", "loss_chunk_size": 0, "seed": 0},
        "search_space": {
            "d_model": {"type": "categorical", "choices": [16, 32, 64]},
            "learning_rate": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True},
            "ffn_rank": {"type": "int", "low": 4, "high": 16, "step": 4},
            "ar_ssm_max_rank": {"type": "int", "low": 8, "high": 16, "step": 8},
            "htt_rank": {"type": "int", "low": 4, "high": 16, "step": 4},
            "use_gradient_checkpointing": {"type": "categorical", "choices": [True, False]},
        },
        "data": {"source": "stdlib", "max_bytes": args.data_bytes},
        "budget": {"train_tokens": args.train_tokens, "eval_tokens": args.eval_tokens,
                   "trial_timeout_s": args.trial_timeout_s},
        "pruning": {"learning_curve": {"enabled": pruning, "min_fraction": args.min_fraction,
                                       "confidence": args.confidence}},
    }


def run_study(label: str, pruning: bool, args: argparse.Namespace, out: Path) -> tuple[list[Any], float]:
    """Run one study to `args.trials` trials through tuner.trial.worker.run_worker (child process, real objective)."""
    import optuna

    from tuner.storage.connect import open_storage
    from tuner.study.loader import spec_from_dict
    from tuner.trial.worker import run_worker

    spec = spec_from_dict(study_dict(f"learning_curve_{label}", pruning, args), where=f"bench:{label}")
    url = f"sqlite:///{out / f'{label}.db'}"
    t0 = time.perf_counter()
    run_worker(spec, storage=open_storage(url), seed=spec.sampler.seed, gpu=None if args.device == "cpu" else 0, n_trials=args.trials,
               cache_dir=out / "cache", cpu_threads=args.threads, install_signal_handlers=False)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=spec.name, storage=url)
    return study.get_trials(deepcopy=False), wall


def prepare(args: argparse.Namespace, out: Path) -> None:
    """Tokenize the data once, then run one untimed warm-up trial, so neither arm pays one-off costs inside a timed
    trial. Measured without the warm-up: the first arm's first trial took 37.6 s against ~10 s for the same
    parameters in the second arm (files and compiled code cached across processes), inflating the time saved."""
    import optuna

    from model.data import DataSource, prepare_data
    from tuner.storage.connect import open_storage
    from tuner.study.loader import spec_from_dict
    from tuner.trial.worker import run_worker

    prepare_data(DataSource(kind="stdlib", max_bytes=args.data_bytes), VOCAB, out / "cache")
    (out / "warmup.db").unlink(missing_ok=True)
    spec = spec_from_dict({**study_dict("learning_curve_warmup", False, args), "n_trials": 1}, where="bench:warmup")
    run_worker(spec, storage=open_storage(f"sqlite:///{out / 'warmup.db'}"), seed=spec.sampler.seed, gpu=None if args.device == "cpu" else 0, n_trials=1,
               cache_dir=out / "cache", cpu_threads=args.threads, install_signal_handlers=False)
    t = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{out / 'warmup.db'}").trials[0]
    print(f"warm-up trial: {t.user_attrs.get('end_reason')}, {t.user_attrs.get('trial_wall_s')} s (not counted)",
          flush=True)


def _record(t: Any) -> dict[str, Any]:
    return {"number": t.number, "state": t.state.name, "end_reason": t.user_attrs.get("end_reason"),
            "params": t.params, "values": t.values, "trial_wall_s": t.user_attrs.get("trial_wall_s"),
            "duration_s": trial_seconds(t), "curve_prediction": trial_attr(t, "curve_prediction"),
            "n_curve_points": len(trial_attr(t, "curve") or [])}


def summarize(with_trials: list[Any], without_trials: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    _staircase_check()
    wall_with = sum(float(t.user_attrs.get("trial_wall_s") or trial_seconds(t)) for t in with_trials)
    wall_without = sum(float(t.user_attrs.get("trial_wall_s") or trial_seconds(t)) for t in without_trials)
    front_with, front_without = feasible_front(with_trials), feasible_front(without_trials)
    ref = REF[args.device]
    hv_with, hv_without = hypervolume_2d(front_with, ref), hypervolume_2d(front_without, ref)

    # Which pruned configs would have been on the no-pruning front (same k-th trial = same params)?
    by_number = {t.number: t for t in without_trials}
    front_set = set(front_without)
    wrong = []
    for t in with_trials:
        if t.user_attrs.get("end_reason") == "learning_curve" and t.number in by_number:
            twin = by_number[t.number]
            if twin.params == t.params and twin.values and (float(twin.values[0]), float(twin.values[1])) in front_set:
                wrong.append(t.number)

    # Prediction at 1/4 of the budget: completed trials of the no-pruning run, from their own early points. When the
    # service records no curve with pruning off, the with-pruning run's completed trials are the only curves there are.
    source = "without"
    qerr = quarter_errors(without_trials, args.train_tokens)
    if not qerr:
        source = "with (the no-pruning run recorded no curves)"
        qerr = quarter_errors(with_trials, args.train_tokens)
    rank_err = None
    pairs = [(q["early_rank"], q["final_ppl"]) for q in qerr if q.get("early_rank") is not None]
    if len(pairs) >= 3:
        rank_err = rank_predictor_error([p[0] for p in pairs], [p[1] for p in pairs])
    late_errs = [q["late_alpha_error"] for q in qerr if q["late_alpha_error"] is not None]
    own_errs = [q["own_fit_error"] for q in qerr]
    n_pruned = sum(t.user_attrs.get("end_reason") == "learning_curve" for t in with_trials)
    tok_with = sum(trained_tokens(t, args.train_tokens) for t in with_trials)
    tok_without = sum(trained_tokens(t, args.train_tokens) for t in without_trials)
    return {
        "device": args.device_name,
        "trials": args.trials,
        "gpu_time_saved_frac": 1.0 - wall_with / wall_without if wall_without > 0 else None,
        "hypervolume_with": hv_with,
        "hypervolume_without": hv_without,
        "hypervolume_loss_frac": 1.0 - hv_with / hv_without if hv_without > 0 else None,
        "median_pred_error_at_quarter": statistics.median(late_errs) if late_errs else None,
        "pred_method_at_quarter": "late_alpha: own latest point at <= 1/4 budget x (B/t)^alpha_late, alpha_late "
                                  "from the run's other completed curves (leave-one-out)",
        "median_pred_error_at_quarter_own_fit": statistics.median(own_errs) if own_errs else None,
        "pruned_with_method": sorted({(trial_attr(t, "curve_prediction") or {}).get("method", "power_law")
                                      for t in with_trials if t.user_attrs.get("end_reason") == "learning_curve"}),
        # extras
        "time_measure": "sum of trial_wall_s (child: request sent -> outcome; training + evaluations)",
        "train_tokens_saved_frac": 1.0 - tok_with / tok_without if tok_without > 0 else None,
        "trial_wall_s_with": wall_with,
        "trial_wall_s_without": wall_without,
        "hypervolume_reference": {"val_ppl": ref[0], "peak_vram_gib": ref[1]},
        "front_with": front_with,
        "front_without": front_without,
        "n_pruned": n_pruned,
        "pruned_that_were_on_the_front": wrong,
        "pred_error_at_quarter_source": source,
        "pred_errors_at_quarter": qerr,
        "rank_predictor_median_loo_error": rank_err,
        "settings": {"min_fraction": args.min_fraction, "confidence": args.confidence,
                     "train_tokens": args.train_tokens, "eval_tokens": args.eval_tokens, "n_seq": args.n_seq,
                     "batch_size": args.batch_size, "threads": args.threads, "seed": args.seed},
        "trials_with": [_record(t) for t in with_trials],
        "trials_without": [_record(t) for t in without_trials],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--train-tokens", type=int, default=32768)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--n-seq", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--min-fraction", type=float, default=0.25)
    ap.add_argument("--confidence", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-bytes", type=int, default=2 * 2**20)
    ap.add_argument("--trial-timeout-s", type=int, default=300)
    ap.add_argument("--only", choices=["with", "without"], default=None, help="run one arm (debugging)")
    ap.add_argument("--summarize-only", action="store_true",
                    help="recompute DIR/learning_curve.json from the studies a previous run left in DIR")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.summarize_only:
        return _summarize_existing(args, out)
    for label in ("with", "without"):  # fresh studies: a rerun must not reuse the last run's trials
        (out / f"{label}.db").unlink(missing_ok=True)
    if args.device == "cuda":
        import torch

        args.device_name = torch.cuda.get_device_name(0)
    else:
        args.device_name = f"cpu ({platform.processor() or platform.machine()}, {args.threads} thread(s) per trial)"
    t0 = time.perf_counter()
    prepare(args, out)
    print(f"data ready and warm-up done in {time.perf_counter() - t0:.1f} s", flush=True)
    arms = {}
    for label, pruning in (("without", False), ("with", True)):
        if args.only and args.only != label:
            continue
        trials, wall = run_study(label, pruning, args, out)
        arms[label] = trials
        print(f"{label} pruning: {len(trials)} trials in {wall:.1f} s", flush=True)
    if len(arms) < 2:
        print(json.dumps([_record(t) for t in next(iter(arms.values()))], indent=1, default=str))
        return 0
    res = summarize(arms["with"], arms["without"], args)
    res["total_bench_s"] = time.perf_counter() - t0
    _write(res, out)
    return 0


def _write(res: dict[str, Any], out: Path) -> None:
    (out / "learning_curve.json").write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps({k: res[k] for k in ("device", "trials", "gpu_time_saved_frac", "train_tokens_saved_frac",
                                          "hypervolume_with", "hypervolume_without", "hypervolume_loss_frac",
                                          "median_pred_error_at_quarter", "median_pred_error_at_quarter_own_fit",
                                          "n_pruned", "pruned_with_method",
                                          "rank_predictor_median_loo_error")}, indent=2))


def _summarize_existing(args: argparse.Namespace, out: Path) -> int:
    import optuna

    prev = json.loads((out / "learning_curve.json").read_text()) if (out / "learning_curve.json").exists() else {}
    arms = {label: optuna.load_study(study_name=f"learning_curve_{label}", storage=f"sqlite:///{out / f'{label}.db'}")
            .get_trials(deepcopy=False) for label in ("with", "without")}
    args.device_name = prev.get("device", "unknown (summarized from stored studies)")
    res = summarize(arms["with"], arms["without"], args)
    res["total_bench_s"] = prev.get("total_bench_s")
    _write(res, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
