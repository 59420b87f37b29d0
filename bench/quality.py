"""What the compression costs in quality: the Phase 1 presets against the dense baseline of the same width, depth,
sequence and vocabulary, and the unigram floor, all on the same training tokens and the same validation windows.

Each model is trained at every learning rate of --lrs and reported at its best; the gate-L1 sweep trains the first
preset at each L1 weight and reports gate sparsity and effective rank (channels in use). Runs are spread over the
host's GPUs (--per-gpu processes each) by bench/lm_runs.py; each run's NVML per-process peak is its memory figure.

    python bench/quality.py --out DIR [--gpus all] [--per-gpu 3] [--fidelity DIR/fidelity.json]
    python bench/quality.py --out DIR --tiny     # CPU smoke test: tiny shapes, a few hundred steps in all

Writes DIR/quality.json: {"device", "train_tokens", "unigram_ppl", "dense": {"lr", "val_ppl", "tokens_per_s",
"nvml_peak_gib"}, "phase1": [{"preset", "lr", "val_ppl", "tokens_per_s", "nvml_peak_gib"}], "l1": [{"l1",
"gate_sparsity", "effective_rank", "val_ppl"}], "fidelity": {...} or null, "sweep": every run}. A diverged run
never supplies a figure; the script refuses to write the file (exit 1) when a model has no run that did not
diverge.
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

# The size the guide's presets were written for, trained on the Python sources (stdlib then site-packages):
# 20M training tokens need ~100 MiB of text at ~4.4 bytes per token, so 128 MiB holds them without repeating.
FULL = {"train_tokens": 20_000_000, "eval_tokens": 262_144, "max_bytes": 128 * 2**20, "lrs": [3e-4, 1e-3, 3e-3],
        "presets": ["8gb", "24gb"], "l1": [1e-4, 1e-3, 1e-2], "l1_tokens": 8_000_000, "shape": {}}
TINY = {"train_tokens": 40 * 8 * 64, "eval_tokens": 2048, "max_bytes": 400_000, "lrs": [1e-3, 3e-3],
        "presets": ["8gb"], "l1": [1e-4, 1e-2], "l1_tokens": 40 * 8 * 64,
        "shape": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_seq": 64, "batch_size": 8, "dtype": "float32",
                  "ar_ssm_use_fused_scan": False, "loss_chunk_size": 0}}


def phase1_config(preset: str, shape: dict, **changes) -> dict:
    from model.config import PRESETS

    cfg = PRESETS[preset].replace(**shape, **changes)
    return cfg.to_dict()


def make_jobs(s: dict, data: dict, cache_dir: str, l1_lr: float) -> list[dict]:
    from model.dense_config import dense_for

    common = {"eval_tokens": s["eval_tokens"], "data": data, "cache_dir": cache_dir}
    jobs = []
    for lr in s["lrs"]:
        base = phase1_config(s["presets"][0], s["shape"])
        dense = dense_for(base, learning_rate=lr).to_dict()
        jobs.append({"id": f"dense-lr{lr:g}", "model": "dense", "config": dense, "train_tokens": s["train_tokens"],
                     "group": "dense", "lr": lr, **common})
        for preset in s["presets"]:
            jobs.append({"id": f"{preset}-lr{lr:g}", "model": "phase1", "train_tokens": s["train_tokens"],
                         "config": phase1_config(preset, s["shape"], learning_rate=lr), "group": preset, "lr": lr,
                         "cost": 2 * s["train_tokens"], **common})  # Phase 1 runs slower per token: start first
    for l1 in s["l1"]:
        jobs.append({"id": f"l1-{l1:g}", "model": "phase1", "train_tokens": s["l1_tokens"], "group": "l1", "l1": l1,
                     "lr": l1_lr, "config": phase1_config(s["presets"][0], s["shape"], learning_rate=l1_lr,
                                                          ar_ssm_l1_regularization=l1), **common})
    return jobs


def best_run(runs: list[dict], group: str) -> dict:
    """The run of `group` with the lowest val PPL among those that finished without diverging; SystemExit if none."""
    ok = [r for r in runs if r["group"] == group and not r.get("diverged") and not r.get("failed")
          and not r.get("killed") and r.get("val_ppl") is not None and math.isfinite(r["val_ppl"])]
    if not ok:
        raise SystemExit(f"quality: no run of {group!r} finished without diverging; no figure is written for it")
    return min(ok, key=lambda r: r["val_ppl"])


def row(r: dict, runs: list[dict]) -> dict:
    tried = sorted({x["lr"] for x in runs if x["group"] == r["group"] and not x.get("killed") and not x.get("failed")})
    return {"lr": r["lr"], "lrs_tried": tried, "val_ppl": r["val_ppl"], "tokens_per_s": r["tokens_per_s"],
            "nvml_peak_gib": r["nvml_peak_gib"], "epochs": r["epochs"], "params": r["param_counts"]}


def summarize(runs: list[dict], s: dict, unigram_ppl: float, header: dict, fidelity: dict | None) -> dict:
    dense = best_run(runs, "dense")
    phase1 = [{"preset": p, **row(best_run(runs, p), runs)} for p in s["presets"]]
    l1_rows = []
    for r in sorted((r for r in runs if r["group"] == "l1"), key=lambda r: r["l1"]):
        if r.get("diverged") or r.get("failed") or r.get("killed"):
            raise SystemExit(f"quality: the L1 run {r['id']} did not finish cleanly; no L1 figures are written")
        l1_rows.append({"l1": r["l1"], "gate_sparsity": r["diagnostics"].get("gate_sparsity"),
                        "effective_rank": r["diagnostics"].get("effective_rank"), "val_ppl": r["val_ppl"],
                        "train_tokens": r["train_tokens"], "lr": r["lr"]})
    sweep = [{"id": r["id"], "group": r["group"], "lr": r.get("lr"), "val_ppl": r.get("val_ppl"),
              "diverged": bool(r.get("diverged")), "failed": bool(r.get("failed")), "killed": bool(r.get("killed")),
              "tokens_per_s": r.get("tokens_per_s"), "nvml_peak_gib": r.get("nvml_peak_gib"),
              "epochs": r.get("epochs")} for r in sorted(runs, key=lambda r: r["id"])]
    return {
        **header, "train_tokens": s["train_tokens"], "eval_tokens": s["eval_tokens"], "unigram_ppl": unigram_ppl,
        "dense": row(dense, runs), "phase1": phase1, "l1": l1_rows, "fidelity": fidelity,
        "ratios": {p["preset"]: {"ppl_vs_dense": p["val_ppl"] / dense["val_ppl"],
                                 "ppl_vs_unigram": p["val_ppl"] / unigram_ppl,
                                 "nvml_vs_dense": (p["nvml_peak_gib"] / dense["nvml_peak_gib"]
                                                   if p["nvml_peak_gib"] and dense["nvml_peak_gib"] else None)}
                   for p in phase1},
        "sweep": sweep,
    }


def _collect(files: list[Path]) -> list[dict]:
    """Runs recorded in quality_runs.jsonl files; a run id recorded twice keeps its finished record."""
    by_id: dict[str, dict] = {}
    for f in files:
        for line in f.read_text().splitlines():
            r = json.loads(line) if line.strip() else None
            if r is None or "meta" in r:
                continue
            old = by_id.get(r["id"])
            if old is None or old.get("killed") or old.get("failed"):
                by_id[r["id"]] = r
    return list(by_id.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--gpus", default="all")
    p.add_argument("--per-gpu", default="3", help="processes per GPU: one count, or one per GPU (2,2,3)")
    p.add_argument("--groups", help="run only these groups (dense, the presets, l1), comma-separated")
    p.add_argument("--place", action="append", default=[], metavar="GROUP=GPU[,GPU]",
                   help="pin a group's runs to these GPUs (repeatable)")
    p.add_argument("--collect", type=Path, nargs="+", metavar="JSONL",
                   help="no training: summarise the runs recorded in these quality_runs.jsonl files")
    p.add_argument("--cache-dir", default=".phase1_cache")
    p.add_argument("--l1-lr", type=float, default=1e-3, help="learning rate of the L1 sweep's runs")
    p.add_argument("--lrs", help="comma-separated learning rates (default: 3e-4,1e-3,3e-3)")
    p.add_argument("--train-tokens", type=int, help="training tokens per run (default 20M)")
    p.add_argument("--l1-tokens", type=int, help="training tokens per L1 run (default 8M)")
    p.add_argument("--skip", default="", help="comma-separated run ids to leave out (e.g. 24gb-lr0.003)")
    p.add_argument("--fidelity", type=Path, help="a fidelity.json whose summary goes under 'fidelity'")
    p.add_argument("--deadline-s", type=float, help="kill runs still going after this many seconds")
    p.add_argument("--tiny", action="store_true", help="CPU-sized smoke run")
    p.add_argument("--unigram-ppl", type=float, help="with --collect: the runs' unigram PPL (from their log)")
    p.add_argument("--device-label", help="with --collect: the device the collected runs ran on (for the header)")
    args = p.parse_args(argv)
    s = dict(TINY if args.tiny else FULL)
    if args.lrs:
        s["lrs"] = [float(x) for x in args.lrs.split(",")]
    if args.train_tokens:
        s["train_tokens"] = args.train_tokens
    if args.l1_tokens:
        s["l1_tokens"] = args.l1_tokens
    args.out.mkdir(parents=True, exist_ok=True)

    from model.data import DataSource, prepare_data, unigram_val_loss

    data = {"kind": "python", "max_bytes": s["max_bytes"]}
    vocab = phase1_config(s["presets"][0], s["shape"])["vocab_size"]
    n_seq = phase1_config(s["presets"][0], s["shape"])["n_seq"]
    if args.collect:  # the unigram floor of the data the runs trained on, as their bench recorded it
        unigram_ppl = args.unigram_ppl or next(
            (json.loads(line)["meta"]["unigram_ppl"] for f in args.collect for line in f.read_text().splitlines()
             if line.startswith('{"meta"')), None)
        if unigram_ppl is None:
            raise SystemExit("quality: the collected runs carry no unigram PPL; pass --unigram-ppl from their log")
    else:
        t0 = time.perf_counter()
        token_data = prepare_data(DataSource(**data), vocab, args.cache_dir, progress=print)
        unigram_ppl = math.exp(unigram_val_loss(token_data, n_seq, s["eval_tokens"]))
        print(f"data: {token_data.n_train_tokens} train tokens, prepared in {time.perf_counter() - t0:.0f} s; "
              f"unigram val PPL {unigram_ppl:.1f}", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "quality_runs.jsonl", "a") as fh:  # read back by --collect
            fh.write(json.dumps({"meta": {"unigram_ppl": unigram_ppl, "data": data,
                                          "n_train_tokens": token_data.n_train_tokens}}) + "\n")
    jobs = make_jobs(s, data, args.cache_dir, args.l1_lr)
    if args.collect:
        runs = _collect(args.collect)
    else:
        if args.groups:
            jobs = [j for j in jobs if j["group"] in args.groups.split(",")]
        jobs = [j for j in jobs if j["id"] not in args.skip.split(",")]
        for place in args.place:
            group, gpus = place.split("=")
            for j in jobs:
                if j["group"] == group:
                    j["gpus"] = [int(g) for g in gpus.split(",")]
        per_gpu = [int(x) for x in args.per_gpu.split(",")]
        runs = lm_runs.run_pool(jobs, gpus=lm_runs.gpu_list(args.gpus), per_gpu=per_gpu if len(per_gpu) > 1
                                else per_gpu[0], jsonl=args.out / "quality_runs.jsonl",
                                work=args.out / "quality_work", deadline_s=args.deadline_s,
                                log=lambda m: print(m, flush=True))
        if args.groups:  # a part of the bench: its runs are in the jsonl for a later --collect
            return 0
    by_id = {j["id"]: j for j in jobs}
    for r in runs:
        r.update({k: by_id[r["id"]][k] for k in ("group", "lr", "l1") if k in by_id[r["id"]]})
    fidelity = None
    if args.fidelity and args.fidelity.exists():
        f = json.loads(args.fidelity.read_text())
        fidelity = {k: f[k] for k in ("n", "budget_tokens", "long_tokens", "spearman", "complete") if k in f}
    header = lm_runs.device_header()
    if args.collect:
        header = {"device": f"{args.device_label or 'unknown device'} (runs collected from "
                            f"{', '.join(f.name for f in args.collect)})"}
    result = summarize(runs, s, unigram_ppl, header, fidelity)
    write_json(args.out / "quality.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "sweep"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
