"""The tuning guide's and the final report's figures, measured: every run one setting away from the 8gb preset,
against the dense baseline of the same width, depth, sequence and vocabulary, all trained on the same tokens and
scored on the same validation windows (bench/quality.py's data source), in one GPU command.

Runs (ids in brackets), each its own process through bench/lm_runs.py's pool:
  quality [q-KEY]: train_tokens each, several per GPU: val PPL, gate sparsity, effective rank, parameters;
  speed   [s-KEY]: a few steps each, alone on one GPU: tokens/s and NVML per-process peak;
  inference [i-base, i-dense]: eval-only memory (bench/claims_probe.py); scan [k-scan]: fused scan vs torch.cumsum.
With two or more GPUs the first takes the speed, inference and scan runs one at a time and the others the quality
runs; with one device everything shares it and the speed figures are marked packed (relative only).

    python bench/claims.py --out DIR [--train-tokens N] [--budget-s 525]       # the GPU run
    python bench/claims.py --out DIR --only q-htt64,s-ckpt_off                  # finish missing runs
    python bench/claims.py --collect A.jsonl B.jsonl --out DIR --write-doc      # rebuild claims.json + docs/claims.md
    python bench/claims.py --out DIR --tiny --serial --write-doc DIR/c.md       # CPU smoke run (~1 minute)

On a 4x H100 host (data preparation ~60-90 s, then about 5-6 minutes of runs; --budget-s kills what is still
running at 525 s, recorded as killed, to be finished with --only):
    PYTHONPATH=$PWD timeout 550 python3 bench/claims.py --out $OUT --write-doc $OUT/claims.md

Writes DIR/claims_runs.jsonl (a meta line, then one line per finished run, as it finishes) and DIR/claims.json
(bench/claims_summary.py: each claim's rows with the guide's figure, ours, the verdict, and the runs missing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's packages before bench/ siblings
sys.path.insert(1, str(Path(__file__).resolve().parent))

import lm_runs
from claims_plan import FULL, TINY, make_jobs, phase1_config, place

from bench._common import RESULTS, write_json

REPO = Path(__file__).resolve().parents[1]
SUMMARY_MARGIN_S = 15.0  # kept free at the end of --budget-s for the summary and the files


def set_quality_step(jobs: list[dict], step: str) -> None:
    """Give the Phase 1 quality runs `step` (tuner.study.spec.StepMode value); the speed runs measure the step as
    the guide describes it (eager) and the dense baseline stays eager."""
    for j in jobs:
        if j["id"].startswith("q-") and j["model"] != "dense":
            j["step"] = step


def read_lines(files: list[Path]) -> tuple[list[dict], list[dict]]:
    """(meta lines, runs) of claims_runs.jsonl files; a run recorded twice keeps a finished record over a killed
    or failed one, and the later of two finished ones."""
    metas, by_id = [], {}
    for f in files:
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            if "meta" in r:
                metas.append(r["meta"])
                continue
            old = by_id.get(r["id"])
            if old is None or not (r.get("killed") or r.get("failed")) or old.get("killed") or old.get("failed"):
                by_id[r["id"]] = r
    return metas, list(by_id.values())


def settings(args: argparse.Namespace) -> dict:
    s = dict(TINY if args.tiny else FULL)
    if args.train_tokens:
        s["train_tokens"] = args.train_tokens
    if args.lr:
        s["lr"] = args.lr
    return s


def run_serial(jobs: list[dict], jsonl: Path) -> None:
    """Run `jobs` one after another in this process, each result appended to `jsonl` as run_pool does (for CPU
    smoke runs, where importing torch in a new process per run costs more than the runs themselves)."""
    import traceback

    from claims_probe import run_probe

    for job in jobs:
        t0 = time.perf_counter()
        try:
            res = run_probe(job) if job.get("script") == "claims_probe.py" else lm_runs.run_one(job)
        except Exception as exc:  # noqa: BLE001 - one run's failure is that run's result, as in run_pool
            traceback.print_exc()
            res = {"id": job["id"], "model": job["model"], "diverged": False, "failed": True,
                   "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
        res["gpu"] = None
        with open(jsonl, "a") as fh:
            fh.write(json.dumps(res) + "\n")
        print(f"done {job['id']} in this process ({time.perf_counter() - t0:.1f} s)", flush=True)


def train(args: argparse.Namespace, s: dict, t_start: float) -> Path:
    """Prepare the data, run the plan (or --only its named runs) and return the jsonl the runs were written to."""
    from model.data import DataSource, prepare_data

    jobs = make_jobs(s, args.cache_dir)
    set_quality_step(jobs, args.step)
    only = {x for x in args.only.split(",") if x}
    unknown = only - {j["id"] for j in jobs}
    if unknown:
        raise SystemExit(f"claims: --only names runs this measurement does not have: {sorted(unknown)}")
    gpus = lm_runs.gpu_list(args.gpus)
    jobs, per_gpu = place(jobs, gpus, args.per_gpu)
    header = lm_runs.device_header()
    jsonl = args.out / "claims_runs.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    token_data = prepare_data(
        DataSource(**s["data"]), phase1_config(s, "base")["vocab_size"], args.cache_dir, progress=print
    )
    print(f"data: {token_data.n_train_tokens} train tokens, prepared in {time.perf_counter() - t0:.0f} s", flush=True)
    plan = [
        {k: j[k] for k in ("id", "kind", "key", "model", "alone") if k in j} | {"gpu": j.get("gpus", [None])[0]}
        for j in jobs
    ]
    meta = {
        "settings": s,
        "plan": plan,
        "header": header,
        "only": sorted(only),
        "gpus": gpus,
        "per_gpu": per_gpu,
        "n_train_tokens_in_data": token_data.n_train_tokens,
        "argv": args.argv,
    }
    with open(jsonl, "a") as fh:
        fh.write(json.dumps({"meta": meta}) + "\n")
    todo = [j for j in jobs if not only or j["id"] in only]
    deadline = args.budget_s - (time.monotonic() - t_start) - SUMMARY_MARGIN_S if args.budget_s else None
    if deadline is not None and deadline <= 0:
        raise SystemExit(f"claims: --budget-s {args.budget_s} was spent before training (data preparation)")
    if args.serial:
        run_serial(todo, jsonl)
        return jsonl
    lm_runs.run_pool(
        todo,
        gpus=gpus,
        per_gpu=per_gpu,
        jsonl=jsonl,
        work=args.out / "claims_work",
        deadline_s=deadline,
        log=lambda m: print(m, flush=True),
    )
    return jsonl


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for claims_runs.jsonl and claims.json")
    p.add_argument("--gpus", default="all")
    p.add_argument(
        "--per-gpu", type=int, help="processes per quality GPU (default: all its runs at once; one device: 2)"
    )
    p.add_argument(
        "--train-tokens",
        type=int,
        help=f"training tokens per quality run (default {FULL['train_tokens']}: what fits 9 minutes on a 4x H100 host)",
    )
    p.add_argument("--lr", type=float, help=f"learning rate of every run (default {FULL['lr']})")
    p.add_argument(
        "--step",
        default="eager",
        choices=("eager", "compile", "compile_graphs"),
        help="the Phase 1 quality runs' training step (tuner.study.spec.StepMode; same losses, faster on CUDA); "
        "the dense run and the speed runs stay eager",
    )
    p.add_argument("--only", default="", help="run only these ids (comma-separated), appending to the jsonl")
    p.add_argument(
        "--budget-s",
        type=float,
        help="wall seconds from start (default 525, --tiny: no limit): runs still going at the end (less a margin "
        "for the summary) are killed and recorded as killed; 0: no limit",
    )
    p.add_argument("--collect", type=Path, nargs="+", metavar="JSONL", help="no training: summarise these files")
    p.add_argument(
        "--write-doc",
        nargs="?",
        const=REPO / "docs" / "claims.md",
        type=Path,
        metavar="PATH",
        help="also write the markdown tables (default docs/claims.md)",
    )
    p.add_argument(
        "--fidelity",
        type=Path,
        default=RESULTS / "fidelity.json",
        help="the budget's rank-fidelity measurement quoted in the doc",
    )
    p.add_argument("--cache-dir", default=".phase1_cache")
    p.add_argument("--tiny", action="store_true", help="CPU-sized smoke run (tiny shapes, stdlib tokens)")
    p.add_argument(
        "--serial",
        action="store_true",
        help="run the jobs one after another in this process (CPU smoke runs; no NVML separation between runs)",
    )
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.budget_s is None:
        args.budget_s = 0.0 if args.tiny else 525.0
    if args.serial:
        args.per_gpu = 1  # one run at a time: every figure is a run alone on the device
    t_start = time.monotonic()
    from claims_doc import render
    from claims_summary import summarize

    if args.collect:
        files = args.collect
    else:
        files = [train(args, settings(args), t_start)]
    metas, runs = read_lines(files)
    if not metas:
        raise SystemExit(f"claims: no meta line in {', '.join(map(str, files))}: not a claims_runs.jsonl")
    fidelity = json.loads(args.fidelity.read_text()) if args.fidelity and args.fidelity.exists() else None
    # one command per jsonl meta line: the speed and quality jobs may come from different GPU runs
    commands = list(dict.fromkeys("python bench/claims.py " + " ".join(m.get("argv", [])) for m in metas))
    result = summarize(metas, runs, fidelity=fidelity, commands=commands, sources=[f.name for f in files])
    write_json(args.out / "claims.json", result)
    if args.write_doc:
        args.write_doc.parent.mkdir(parents=True, exist_ok=True)
        args.write_doc.write_text(render(result))
    missing = result["missing"]
    print(
        f"claims: {sum(len(c['rows']) for c in result['claims'])} rows, "
        f"{sum(r['verdict'] == 'holds' for c in result['claims'] for r in c['rows'])} hold; "
        f"{len(missing)} runs missing{': ' + ', '.join(missing) if missing else ''}",
        flush=True,
    )
    if missing:
        print(f"claims: finish them with --only {','.join(missing)}, then --collect both jsonl files", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
