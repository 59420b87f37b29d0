"""Does the study's budget rank configurations as longer training would? Spearman rank correlation of val PPL
between each configuration trained at the study's budget and at `--factor` times it (same seeds, same data, same
validation windows).

Configurations are drawn from the study's search space by Optuna's RandomSampler (seed --seed), built exactly as
trials build them (fixed model + sampled params -> Phase1Config). `--also-budgets` trains the same configurations at
other short budgets too, each correlated against the same long run, to choose the budget to ship. A run that
diverged ranks last (it is the worst outcome a user could get) and supplies no PPL figure; the correlation over
the pairs where both runs finished is reported beside it. The script refuses to write figures when a run failed or
was killed (the set would be incomplete).

    python bench/fidelity.py --study studies/phase1_8gb.yaml --out DIR [--n 12] [--factor 8] [--gpus all]
    python bench/fidelity.py --study studies/quickstart.yaml --out DIR --n 4 --per-gpu 2   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's packages before bench/ siblings
sys.path.insert(1, str(Path(__file__).resolve().parent))

from bench._common import write_json  # noqa: E402

import lm_runs  # noqa: E402


def sample_configs(spec, n: int, seed: int) -> list[dict]:
    """n distinct parameter sets from the study's space (RandomSampler), with their built Phase1Config dicts."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out, seen = [], set()
    while len(out) < n:
        trial = study.ask()
        params = spec.space.suggest(trial)
        key = json.dumps(params, sort_keys=True)
        study.tell(trial, 0.0)
        if key in seen:
            continue
        seen.add(key)
        out.append({"params": params, "config": spec.build_config(params).to_dict()})
    return out


def correlations(pairs: list[dict], short_key: str, long_key: str) -> dict:
    """Spearman of short vs long PPL: diverged runs rank last ("spearman"); over both-finished pairs beside it."""
    def ppl(p: dict, key: str) -> float:
        return math.inf if p[key] is None else p[key]

    short, long_ = [ppl(p, short_key) for p in pairs], [ppl(p, long_key) for p in pairs]
    both = [(s, lg) for s, lg in zip(short, long_) if math.isfinite(s) and math.isfinite(lg)]
    return {"spearman": lm_runs.spearman(short, long_),
            "spearman_finished_only": lm_runs.spearman(*map(list, zip(*both))) if len(both) >= 3 else None,
            "n_both_finished": len(both)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=int, default=12, help="configurations (default 12)")
    p.add_argument("--factor", type=int, default=8, help="long run = factor x the study's budget (default 8)")
    p.add_argument("--also-budgets", default="", help="comma-separated extra short budgets in tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpus", default="all")
    p.add_argument("--per-gpu", default="3", help="processes per GPU: one count, or one per GPU (3,3,4)")
    p.add_argument("--cache-dir", default=".phase1_cache")
    p.add_argument("--deadline-s", type=float, help="kill runs still going after this many seconds")
    p.add_argument("--budget-tokens", type=int, help="the short budget (default: the study's train_tokens)")
    p.add_argument("--collect", type=Path, metavar="JSONL",
                   help="no training: summarise the runs recorded in this fidelity_runs.jsonl")
    p.add_argument("--partial", action="store_true",
                   help="with --collect: write the correlation over the configurations whose short and long runs "
                        "both finished, marked \"complete\": false, instead of refusing")
    p.add_argument("--device-label", help="with --collect: the device the collected runs ran on (for the header)")
    args = p.parse_args(argv)

    from tuner.study.loader import load_spec

    spec = load_spec(args.study)
    budget = args.budget_tokens or spec.budget.train_tokens
    short_budgets = [budget] + [int(x) for x in args.also_budgets.split(",") if x]
    long_tokens = args.factor * budget
    samples = sample_configs(spec, args.n, args.seed)
    data = spec.data.to_dict()
    args.out.mkdir(parents=True, exist_ok=True)

    jobs = []
    for i, smp in enumerate(samples):
        for tokens in sorted({*short_budgets, long_tokens}):
            jobs.append({"id": f"c{i:02d}-t{tokens}", "model": "phase1", "config": smp["config"],
                         "train_tokens": tokens, "eval_tokens": spec.budget.eval_tokens, "data": data,
                         "cache_dir": args.cache_dir})
    if args.collect:
        runs = [json.loads(line) for line in args.collect.read_text().splitlines() if line.strip()]
    else:
        runs = _train(args, spec, samples, jobs, long_tokens)
    by_id = {r["id"]: r for r in runs}

    def finished(run_id: str) -> bool:
        return run_id in by_id and not by_id[run_id].get("failed") and not by_id[run_id].get("killed")

    required = {budget, long_tokens}  # the extra short budgets are optional: dropped when any of them is missing
    for tokens in short_budgets[1:]:
        if not all(finished(f"c{i:02d}-t{tokens}") for i in range(len(samples))):
            print(f"fidelity: budget {tokens} incomplete, left out", file=sys.stderr)
            short_budgets.remove(tokens)

    incomplete = [j["id"] for j in jobs if j["train_tokens"] in required and not finished(j["id"])]
    if incomplete and not args.partial:
        print(f"fidelity: {len(incomplete)} runs failed or did not finish ({', '.join(incomplete[:6])}...); "
              "no figures written (the per-run lines are in fidelity_runs.jsonl)", file=sys.stderr)
        return 1
    keep = [i for i in range(len(samples)) if all(finished(f"c{i:02d}-t{t}") for t in required)]
    pairs = []
    for i in keep:
        smp = samples[i]
        pair = {"config": i, "params": smp["params"]}
        for tokens in sorted({*short_budgets, long_tokens}):
            r = by_id[f"c{i:02d}-t{tokens}"]  # present and finished (checked above)
            pair[f"ppl_{tokens}"] = None if r.get("diverged") else r["val_ppl"]
            pair[f"tokens_per_s_{tokens}"] = r.get("tokens_per_s")
            pair[f"nvml_peak_gib_{tokens}"] = r.get("nvml_peak_gib")
            pair[f"epochs_{tokens}"] = r.get("epochs")
        pairs.append(pair)
    by_budget = {str(b): correlations(pairs, f"ppl_{b}", f"ppl_{long_tokens}") for b in short_budgets}
    result = {**lm_runs.device_header(), "study": str(args.study), "n": len(pairs), "n_configs": args.n,
              "complete": not incomplete, "unfinished_runs": incomplete, "seed": args.seed,
              "budget_tokens": budget, "long_tokens": long_tokens, "spearman": by_budget[str(budget)]["spearman"],
              "by_budget": by_budget, "n_diverged": sum(1 for r in runs if r.get("diverged")), "pairs": pairs}
    if args.collect:
        for key in ("torch", "python", "n_gpus"):  # this process's, not the runs'
            result.pop(key, None)
        result["device"] = f"{args.device_label or 'unknown device'} (runs collected from {args.collect.name})"
    write_json(args.out / "fidelity.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "pairs"}, indent=1))
    return 0


def _train(args, spec, samples: list[dict], jobs: list[dict], long_tokens: int) -> list[dict]:
    from model.data import prepare_data

    t0 = time.perf_counter()
    token_data = prepare_data(spec.data, samples[0]["config"]["vocab_size"], args.cache_dir, progress=print)
    print(f"data: {token_data.n_train_tokens} train tokens ({long_tokens / token_data.n_train_tokens:.2f} epochs "
          f"for the long run), prepared in {time.perf_counter() - t0:.0f} s", flush=True)
    per_gpu = [int(x) for x in args.per_gpu.split(",")]
    return lm_runs.run_pool(jobs, gpus=lm_runs.gpu_list(args.gpus), per_gpu=per_gpu if len(per_gpu) > 1 else per_gpu[0],
                            jsonl=args.out / "fidelity_runs.jsonl", work=args.out / "fidelity_work",
                            deadline_s=args.deadline_s, log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    sys.exit(main())
