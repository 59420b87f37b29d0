"""Learning-curve pruning settings replayed over the 8 GiB study's recorded H100 curves (bench/search_efficiency.py's
replay, per setting): which (min_fraction, confidence) would have saved >= 40% of the training for <= 2% of
hypervolume, and which front trials each would have pruned. In-sample: the settings are judged on the curves they
would be chosen from, so a setting found here is a candidate for a live run, not a measured result.

    python bench/pruning_sweep.py [--out bench/results/pruning_sweep.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import search_efficiency as se
from bench._common import RESULTS, write_json

MIN_FRACTIONS = (0.0625, 0.125, 0.25)
CONFIDENCES = (0.5, 0.7, 0.8, 0.9, 0.95)
ORDERS = ("start", "sequential")  # as the workers ran (what each trial could see), or one worker in trial order


def sweep(
    trials: list[Any], base: Any, budget_tokens: int, vocab_size: int, ceiling_gib: float,
    min_fractions: tuple[float, ...] = MIN_FRACTIONS, confidences: tuple[float, ...] = CONFIDENCES,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per (min_fraction, confidence, order): pruned count, training tokens and seconds saved (fractions),
    hypervolume lost (the data-derived reference), the front trials pruned, and whether the issue's goal holds."""
    rows = []
    for mf, conf, order in itertools.product(min_fractions, confidences, ORDERS):
        settings = dataclasses.replace(base, min_fraction=mf, confidence=conf)
        r = se.replay_summary(trials, settings, budget_tokens, vocab_size, ceiling_gib, order)
        rows.append({
            "min_fraction": mf, "confidence": conf, "order": order, "n_pruned": r["n_pruned"],
            "train_tokens_saved_frac": r["train_tokens_saved_frac"],
            "train_seconds_saved_frac": r["train_seconds_saved_frac"],
            "hv_loss_frac": r["hypervolume"]["data"]["hv_loss_frac"],
            "pruned_on_full_front": r["pruned_on_full_front"], "meets_goal": r["meets_goal"],
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", type=Path, default=se.REPO / "studies" / "phase1_8gb.yaml")
    p.add_argument("--db", type=Path, default=se.MAIN_DB)
    p.add_argument("--out", type=Path, default=RESULTS / "pruning_sweep.json")
    args = p.parse_args(argv)
    from tuner.study.loader import load_spec

    spec = load_spec(args.study)
    trials, attrs = se.load(args.db, spec.name)
    rows = sweep(trials, spec.pruning, int(spec.budget.train_tokens), int(spec.model["vocab_size"]),
                 float(attrs["vram_ceiling_gib"]))  # fmt: skip
    db = args.db.relative_to(se.REPO) if args.db.is_relative_to(se.REPO) else args.db
    shipped = {"min_fraction": spec.pruning.min_fraction, "confidence": spec.pruning.confidence}
    goal = {"train_tokens_saved_frac_min": se.GOAL_SAVED_FRAC, "hv_loss_frac_max": se.GOAL_HV_LOSS_FRAC}
    out = {"kind": "replay sweep (in-sample)", "study": spec.name, "db": str(db), "shipped": shipped, "goal": goal}
    write_json(args.out, {**out, "rows": rows})
    for r in rows:
        print(f"min_fraction {r['min_fraction']:<7g} confidence {r['confidence']:<5g} {r['order']:<10} pruned "
              f"{r['n_pruned']:2d} saved {r['train_tokens_saved_frac']:.1%} hv lost {r['hv_loss_frac']:.2%} "
              f"front pruned {r['pruned_on_full_front']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
