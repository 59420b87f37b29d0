"""Training step time of each preset against the dense baseline of the same shape, eager and fast paths side by
side, all in one run: tokens/s, ms/step, NVML per-process peak, MFU, and a torch.profiler summary of the last steps.

Each (model, variant) trains in a fresh process (so NVML's per-process figure is its own) through the project's
trainer (`model.train.train_and_evaluate`, the step a tuning trial runs: optimizer, clipping, stability checks) at
V 50257, D 1024, 12 layers, L 2048, B 8, bf16. Variants (model/fast.py): "eager" (today's step), "compile"
(`compile_step=True`), "fused" (`fused_loss=True`), "compile_fused" (both), and with the step's forward and backward
replayed from a CUDA graph (`cuda_graph_step=True`, model/graph_step.py: steps 1-2 eager, step 3 captures) "graphs"
and "compile_graphs" (with compile_step); a graph row whose capture fails is recorded as failed, never run eagerly
instead, and its JSON row counts the captures and replays. Tokens: "synthetic" (uniform random
ids; step time does not depend on the text, and preparing nothing keeps the run short) or "python" (the project's
`python` corpus source capped at --max-bytes, tokenised once by the parent). The JSON says which.

Timing: the trainer synchronises on the loss every step; the bench stamps the host clock at each step's end
(on_step) and reports the median step over steps 3 .. N-4 (the first two steps compile and warm the allocator, the
last four are the profiler's warm-up and window), with the 10th/90th percentiles as the spread. tokens_per_s =
B*L / median step. MFU = FLOPs of one training step counted by torch.utils.flop_counter on the eager model
(forward, backward and checkpointing's recomputation; the compiled step does the same math, the fused loss one head
GEMM fewer per chunk, which its flops_per_step shows) / median step / the GPU's dense bf16 peak (989 TFLOP/s,
H100/H200 SXM).

    python bench/throughput.py [--out DIR] [--steps 30] [--rows 8gb:eager,8gb:compile_fused,...]
                               [--data synthetic|python] [--budget-s 510]
    python bench/throughput.py --tiny --out /tmp/tp   # CPU, tiny shapes, 4 rows: proves the script
On one H100 (the ten default rows, about 8-9 minutes; --budget-s keeps it under 9):
    PYTHONPATH=$PWD timeout 570 python3 bench/throughput.py --out $OUT
The CUDA-graph rows beside the dense baseline and today's best 8gb step (about 4 minutes; rows are taken in order,
the last ones skipped if the budget runs out):
    PYTHONPATH=$PWD timeout 250 python3 bench/throughput.py --out $OUT --budget-s 225 --rows GRAPH_ROWS
Writes DIR/throughput.json {"device", "torch", "data", "rows": [{"model", "variant", "tokens_per_s",
"ms_per_step", "nvml_peak_gib", "mfu", ...}]} and DIR/profile_step.json (bench/profile_step.py's summaries), both
rewritten after every row, so a run cut short keeps what it measured. Rows run in ROWS order; a row that cannot
start with less than MIN_ROW_S of --budget-s left is recorded as skipped, one that fails as failed (its error, no
figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's packages before bench/ siblings

from bench._common import RESULTS, device_header, write_json

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}
MODELS = ("8gb", "dense", "24gb", "10gb")
# variant -> train_and_evaluate switches (model/fast.py): compile_step, fused_loss, cuda_graph_step
VARIANTS = {"eager": (False, False, False), "compile": (True, False, False), "fused": (False, True, False),
            "compile_fused": (True, True, False), "graphs": (False, False, True),
            "compile_graphs": (True, False, True)}  # fmt: skip
# Run order: the dense baseline and each preset eager then with both switches (memory and speed per preset), then
# each switch alone on the 8gb preset (what each contributes), the dense model's fast path last. Rows past
# --budget-s are recorded as skipped.
ROWS = ("8gb:eager", "8gb:compile_fused", "dense:eager", "24gb:eager", "24gb:compile_fused", "10gb:eager",
        "10gb:compile_fused", "8gb:compile", "8gb:fused", "dense:compile_fused")  # fmt: skip
TINY_ROWS = ("8gb:eager", "8gb:compile_fused", "dense:eager", "dense:fused")  # ~2 minutes on 2 idle cores
# --rows GRAPH_ROWS: the CUDA-graph variants, most telling first: the 8gb and 24gb presets' fastest candidate, the
# baseline, the graph alone, today's best 8gb step (compile) for a same-run comparison, the baseline's graph
GRAPH_ROWS = ("8gb:compile_graphs", "dense:eager", "24gb:compile_graphs", "8gb:graphs", "8gb:compile",
              "dense:graphs", "24gb:graphs")  # fmt: skip
MIN_ROW_S = 60.0  # a row needs about this long at least (process start, first-step compilation)
ROW_TIMEOUT_S = 240.0  # a row past this (a compile gone wrong) must not eat the whole run
TINY = dict(vocab_size=512, d_model=64, n_layers=2, n_seq=64, batch_size=2, ffn_rank=8, htt_rank=4,
            loss_chunk_size=32)  # fmt: skip


def config_for(name: str, tiny: bool = False):
    """The preset's config (the dense baseline of the 8gb preset's shape for "dense"); tiny: CPU-sized shapes."""
    from model.config import PRESETS
    from model.dense_config import dense_for

    base = PRESETS["8gb" if name == "dense" else name]
    if tiny:
        r = min(base.ar_ssm_max_rank, 8)
        base = base.replace(**TINY, ar_ssm_max_rank=r, ar_ssm_min_rank=min(base.ar_ssm_min_rank, r // 2))
    return dense_for(base.to_dict()) if name == "dense" else base


def synthetic_data(vocab_size: int, n_train: int, n_val: int, seed: int = 0):
    """A TokenData of uniform random ids (no tokenizer): for speed rows, whose step time does not depend on text."""
    import numpy as np

    from model.data import TokenData

    rng = np.random.default_rng(seed)
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
    train, val = (rng.integers(0, vocab_size, n, dtype=np.int64).astype(dtype) for n in (n_train, n_val))
    values: dict[str, Any] = dict(train=train, val=val, vocab_size=vocab_size, tokenizer_path="",
                                  corpus_hash="synthetic", eot_id=0, n_learned_tokens=vocab_size, n_train_docs=1,
                                  n_val_docs=1, n_bytes=0, skipped_files=0, cache_path="", from_cache=False,
                                  prepare_time_s=0.0)  # fmt: skip
    return TokenData(**{f.name: values[f.name] for f in dataclasses.fields(TokenData)})


def load_data(kind: str, config, steps: int, cache_dir: str, max_bytes: int, progress=None):
    from model.data import DataSource, prepare_data

    if kind == "python":
        return prepare_data(DataSource("python", max_bytes=max_bytes), config.vocab_size, cache_dir, progress=progress)
    per_step = config.batch_size * (config.n_seq + 1)
    return synthetic_data(config.vocab_size, (steps + 4) * per_step, 2 * per_step)


def step_flops(model, config, device: str) -> float:
    """FLOPs of one forward + backward at the config's batch shape (flop_counter, eager; includes recomputation)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(0, config.vocab_size, (config.batch_size, config.n_seq + 1), device=device)
    with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
        with torch.autocast(device, dtype=torch.bfloat16):
            out = model(ids[:, :-1], ids[:, 1:])
        out.loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def steady_ms(stamps: dict[int, float], first: int, last: int) -> tuple[float, float, float]:
    """(median, p10, p90) ms of steps first..last, a step's time being its end stamp minus the previous one's."""
    times = sorted((stamps[s] - stamps[s - 1]) * 1e3 for s in range(first, last + 1) if s - 1 in stamps)
    if not times:
        raise ValueError(f"throughput: no timed steps in {first}..{last}; raise --steps")
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return statistics.median(times), q[0], q[-1]


def measure_one(name: str, variant: str, steps: int, tiny: bool, data_kind: str, cache_dir: str,
                max_bytes: int) -> dict[str, Any]:  # fmt: skip
    import torch

    from bench.profile_step import StepProfiler
    from model.train import train_and_evaluate

    cuda = torch.cuda.is_available() and not tiny
    device = "cuda" if cuda else "cpu"
    if not cuda:
        torch.set_num_threads(1)  # a shared CPU: OpenMP threads fighting other processes distort tiny steps
    config = config_for(name, tiny)
    data = load_data(data_kind, config, steps, cache_dir, max_bytes)
    guard = None
    if cuda:
        from tuner.vram.guard import VramGuard

        guard = VramGuard(1000.0, device_uuid=str(torch.cuda.get_device_properties(0).uuid)).start()
    prof = StepProfiler(steps, cuda)
    try:
        with prof:
            result = train_and_evaluate(config, data, train_tokens=steps * config.batch_size * config.n_seq,
                                        eval_tokens=config.n_seq, device=device, on_step=prof.on_step,
                                        return_model=True, compile_step=VARIANTS[variant][0],
                                        fused_loss=VARIANTS[variant][1],
                                        cuda_graph_step=VARIANTS[variant][2])  # fmt: skip
    finally:
        if guard is not None:
            guard.stop()
    ms, p10, p90 = steady_ms(prof.stamps, 3, steps - prof.active - 1)
    flops = step_flops(result.model, config, device)
    gpu = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in gpu), None)
    tokens = config.batch_size * config.n_seq
    return {
        "model": name,
        "variant": variant,
        "tokens_per_s": tokens / (ms / 1e3),
        "ms_per_step": ms,
        "ms_per_step_p10": p10,
        "ms_per_step_p90": p90,
        "nvml_peak_gib": guard.peak_gib if guard is not None and guard.n_seen else None,
        "mfu": flops / (ms / 1e3) / peak if peak else None,
        "peak_torch_gib": result.peak_torch_gib,
        "first_step_s": result.diagnostics.get("first_step_s"),
        "trainer_tokens_per_s": result.tokens_per_s,  # all steps but the first, the profiled ones included
        "flops_per_step": flops,
        "params": sum(result.param_counts.values()),
        "steps": steps,
        "train_loss_last": result.diagnostics.get("train_loss_last"),
        "cuda_graph_replays": result.diagnostics.get("cuda_graph_replays"),  # None: no graph (not 0)
        "profile": prof.summary(),
    }


def _child_cmd(name: str, variant: str, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, __file__, "--one", f"{name}:{variant}", "--steps", str(args.steps), "--data", args.data,
           "--cache-dir", args.cache_dir, "--max-bytes", str(args.max_bytes)]  # fmt: skip
    return cmd + (["--tiny"] if args.tiny else [])


def run_rows(args: argparse.Namespace, on_row=None) -> list[dict[str, Any]]:
    """Every (model, variant) in its own process, within args.budget_s; on_row(rows) after each."""
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    for spec in args.rows.split(","):
        name, variant = spec.split(":")
        left = args.budget_s - (time.monotonic() - t0)
        if left < MIN_ROW_S:
            rows.append({"model": name, "variant": variant, "skipped": f"time budget: {left:.0f} s left"})
            continue
        t_row = time.monotonic()
        try:
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            r = subprocess.run(_child_cmd(name, variant, args), capture_output=True, text=True,
                               timeout=min(ROW_TIMEOUT_S, left), env=env)  # fmt: skip
            line = next((x for x in r.stdout.splitlines() if x.startswith("ROW ")), None)
            if r.returncode != 0 or line is None:
                tail = (r.stdout[-1500:] + "\n" + r.stderr[-3000:]).strip()
                row = {"model": name, "variant": variant, "failed": f"exit {r.returncode}", "error_tail": tail}
                print(f"throughput: {name}/{variant} failed:\n{tail}", file=sys.stderr, flush=True)
            else:
                row = json.loads(line[4:])
        except subprocess.TimeoutExpired:
            row = {"model": name, "variant": variant, "failed": f"timed out after {min(ROW_TIMEOUT_S, left):.0f} s"}
        row["row_wall_s"] = time.monotonic() - t_row
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
        if on_row is not None:
            on_row(rows)
    return rows


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adds speed_vs_dense (against the eager dense row: the baseline) and speed_vs_dense_same_variant."""
    ok = {(r["model"], r["variant"]): r for r in rows if "tokens_per_s" in r}
    for r in rows:
        if "tokens_per_s" not in r:
            continue
        for key, dense in (("speed_vs_dense", ok.get(("dense", "eager"))),
                           ("speed_vs_dense_same_variant", ok.get(("dense", r["variant"])))):  # fmt: skip
            r[key] = r["tokens_per_s"] / dense["tokens_per_s"] if dense else None
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rows", help=f"model:variant,... (models {MODELS}, variants {tuple(VARIANTS)}) or GRAPH_ROWS "
                   f"({','.join(GRAPH_ROWS)}); default {','.join(ROWS)} ({','.join(TINY_ROWS)} "
                   "with --tiny)")  # fmt: skip
    p.add_argument("--data", choices=("synthetic", "python"), default="synthetic")
    p.add_argument("--max-bytes", type=int, default=8 << 20, help="python corpus cap (bytes)")
    p.add_argument("--cache-dir", default=".phase1_cache")
    p.add_argument("--budget-s", type=float, default=510.0, help="wall seconds for all rows")
    p.add_argument("--tiny", action="store_true", help="CPU, tiny shapes: proves the script end to end")
    p.add_argument("--one", help=argparse.SUPPRESS)  # child mode: "model:variant", prints its JSON row
    args = p.parse_args(argv)
    args.rows = args.rows or ",".join(TINY_ROWS if args.tiny else ROWS)
    if args.rows == "GRAPH_ROWS":
        args.rows = ",".join(GRAPH_ROWS)
    for spec in args.rows.split(","):
        name, _, variant = spec.partition(":")
        if name not in MODELS or variant not in VARIANTS:
            p.error(
                f"--rows: {spec!r} is not model:variant with a model of {MODELS} and a variant of {tuple(VARIANTS)}"
            )
    if args.steps < 10:
        p.error(f"--steps {args.steps}: at least 10 (2 warm-up, 4 profiled, the rest timed)")
    if args.one:
        name, variant = args.one.split(":")
        row = measure_one(name, variant, args.steps, args.tiny, args.data, args.cache_dir, args.max_bytes)
        print("ROW " + json.dumps(row, default=str), flush=True)
        return 0
    if args.data == "python":  # tokenise once here; the children read the cache
        load_data("python", config_for("8gb", args.tiny), args.steps, args.cache_dir, args.max_bytes, print)
    header = {**device_header(), "data": args.data, "steps": args.steps, "tiny": args.tiny}
    if args.tiny:  # CPU figures prove the script only: the eager CPU step also runs the trainer's memory tracker
        header["device"] = "cpu (--tiny)"
        header["note"] = "tiny CPU run: proves the script; figures not comparable across variants"

    def write(rows: list[dict[str, Any]]) -> None:
        rows = with_ratios([dict(r) for r in rows])
        profiles = [{"model": r["model"], "variant": r["variant"], "summary": r.pop("profile")}
                    for r in rows if "profile" in r]  # fmt: skip
        write_json(args.out / "throughput.json", {**header, "rows": rows})
        write_json(args.out / "profile_step.json", {**header, "profiles": profiles})

    rows = run_rows(args, write)
    write(rows)
    return 1 if any("failed" in r for r in rows) else 0  # skipped rows (time budget) are recorded, not failures


if __name__ == "__main__":
    sys.exit(main())
