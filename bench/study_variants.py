"""Variants of a study file for the GPU study's side measurements (issue 18): the same search space with another
ceiling, sampler, budget or pruning switch, written as new study files for `tuner launch`.

    python bench/study_variants.py studies/phase1_8gb.yaml --out DIR/tpe30.yaml --name s_tpe30 \
        --train-tokens 500000 --eval-tokens 65536 --n-trials 30 --no-baseline --no-enqueue
    python bench/study_variants.py studies/phase1_8gb.yaml --out DIR/rand60.yaml --name s_rand60 --sampler random ...
    python bench/study_variants.py studies/phase1_8gb.yaml --out DIR/s24.yaml --name phase1_24gb --ceiling-gib 24

Everything not named on the command line is the source file's, so a comparison differs in one setting only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def variant(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """`data` (a study file's mapping) with the overrides in `args`; the input is not changed."""
    out = dict(data)
    out["name"] = args.name
    if args.ceiling_gib is not None:
        out["vram_ceiling_gib"] = args.ceiling_gib
    if args.n_trials is not None:
        out["n_trials"] = args.n_trials
    if args.sampler is not None:
        sampler = dict(out.get("sampler") or {})
        sampler["name"] = args.sampler
        if args.sampler != "tpe":
            sampler.pop("n_startup_trials", None)  # a TPE-only setting
        out["sampler"] = sampler
    budget = dict(out.get("budget") or {})
    if args.train_tokens is not None:
        budget["train_tokens"] = args.train_tokens
    if args.eval_tokens is not None:
        budget["eval_tokens"] = args.eval_tokens
    out["budget"] = budget
    if args.pruning is not None:
        pruning = dict(out.get("pruning") or {})
        curve = dict(pruning.get("learning_curve") or {})
        curve["enabled"] = args.pruning == "on"
        pruning["learning_curve"] = curve
        out["pruning"] = pruning
    if args.step is not None:
        out["training"] = {"step": args.step}
    if args.no_baseline:
        out.pop("baseline", None)
    if args.no_enqueue:
        out.pop("enqueue_presets", None)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="study file to start from")
    p.add_argument("--out", type=Path, required=True, help="study file to write")
    p.add_argument("--name", required=True, help="the variant's study name")
    p.add_argument("--ceiling-gib", type=float)
    p.add_argument("--n-trials", type=int)
    p.add_argument("--sampler", choices=("tpe", "nsga2", "gp", "random"))
    p.add_argument("--train-tokens", type=int)
    p.add_argument("--eval-tokens", type=int)
    p.add_argument("--pruning", choices=("on", "off"), help="learning-curve pruning")
    p.add_argument("--step", choices=("eager", "compile", "compile_graphs"))
    p.add_argument("--no-baseline", action="store_true", help="no dense reference trial")
    p.add_argument("--no-enqueue", action="store_true", help="no enqueued guide presets")
    args = p.parse_args(argv)
    from tuner.errors import SpecError
    from tuner.study.loader import spec_from_dict

    data = variant(yaml.safe_load(args.source.read_text()), args)
    try:  # a variant the tuner would refuse fails here, before any GPU time, and no file is written
        spec_from_dict(data, str(args.out), base_dir=args.source.parent)
    except SpecError as e:
        print(f"study_variants: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(yaml.safe_dump(data, sort_keys=False))
    print(f"wrote {args.out} ({args.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
