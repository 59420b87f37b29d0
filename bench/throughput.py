"""Training step time of each preset against the dense baseline of the same shape, all in one run: tokens/s,
ms/step, NVML per-process peak, MFU, and a torch.profiler summary of a few steps per model.

Each model trains in a fresh process (so NVML's per-process figure is its own) through the project's trainer on
real tokens (the 10 MiB standard-library corpus), at V 50257, D 1024, 12 layers, L 2048, B 8, bf16. tokens/s is the
trainer's steady-state figure (first step left out). MFU = FLOPs of one training step counted by
torch.utils.flop_counter (forward, backward and the recomputation that checkpointing adds) x steps/s / the GPU's
dense bf16 peak (989 TFLOP/s on an H100 SXM).

    python bench/throughput.py --out DIR [--steps 30] [--models 8gb,10gb,24gb,dense]
Writes DIR/throughput.json {"device", "rows": [{"model", "tokens_per_s", "ms_per_step", "nvml_peak_gib", "mfu"}]}
and DIR/throughput_profile.txt (the top kernels of each model by CUDA time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's packages before bench/ siblings

from bench._common import write_json  # noqa: E402

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}
MODELS = ("8gb", "10gb", "24gb", "dense")


def config_for(name: str):
    from model.config import PRESETS
    from model.dense_config import dense_for

    base = PRESETS["8gb" if name == "dense" else name]
    return dense_for(base.to_dict()) if name == "dense" else base


def step_flops(model, config, device) -> float:
    """FLOPs of one forward + backward at the config's batch shape (flop_counter; includes recomputation)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(0, config.vocab_size, (config.batch_size, config.n_seq + 1), device=device)
    with FlopCounterMode(display=False) as counter, torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(ids[:, :-1], ids[:, 1:])
        out.loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def measure_one(name: str, steps: int, cache_dir: str) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from model.data import DataSource, prepare_data
    from model.train import train_and_evaluate
    from tuner.vram.guard import VramGuard

    config = config_for(name)
    data = prepare_data(DataSource("stdlib"), config.vocab_size, cache_dir)
    guard = VramGuard(1000.0, device_uuid=str(torch.cuda.get_device_properties(0).uuid)).start()
    try:
        result = train_and_evaluate(config, data, train_tokens=steps * config.batch_size * config.n_seq,
                                    eval_tokens=config.n_seq, device="cuda", return_model=True)
    finally:
        guard.stop()
    model = result.model
    flops = step_flops(model, config, "cuda")
    ids = torch.randint(0, config.vocab_size, (config.batch_size, config.n_seq + 1), device="cuda")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model(ids[:, :-1], ids[:, 1:]).loss.backward()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60)
    n_kernels = sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA") / 3
    gpu = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in gpu), None)
    ms = config.batch_size * config.n_seq / result.tokens_per_s * 1e3
    return {"model": name, "tokens_per_s": result.tokens_per_s, "ms_per_step": ms,
            "nvml_peak_gib": guard.peak_gib if guard.n_seen else None, "peak_torch_gib": result.peak_torch_gib,
            "mfu": flops / (ms / 1e3) / peak if peak else None, "flops_per_step": flops,
            "cuda_kernels_per_step": n_kernels, "params": sum(result.param_counts.values()), "steps": result.steps,
            "profile": table}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--cache-dir", default=".phase1_cache")
    p.add_argument("--one", help=argparse.SUPPRESS)  # child mode: measure one model, print its JSON row
    args = p.parse_args(argv)
    if args.one:
        print("ROW " + json.dumps(measure_one(args.one, args.steps, args.cache_dir)), flush=True)
        return 0
    import torch

    from model.data import DataSource, prepare_data

    prepare_data(DataSource("stdlib"), 50257, args.cache_dir, progress=print)  # once, before the children
    args.out.mkdir(parents=True, exist_ok=True)
    rows, profiles = [], []
    for name in args.models.split(","):
        r = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--steps", str(args.steps),
                            "--cache-dir", args.cache_dir, "--one", name], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONUNBUFFERED="1"))
        line = next((x for x in r.stdout.splitlines() if x.startswith("ROW ")), None)
        if r.returncode != 0 or line is None:
            print(f"throughput: {name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}", file=sys.stderr)
            return 1
        row = json.loads(line[4:])
        profiles.append(f"==== {name}: {row['ms_per_step']:.1f} ms/step, {row['cuda_kernels_per_step']:.0f} CUDA "
                        f"kernels per step ====\n{row.pop('profile')}\n")
        rows.append(row)
        print(json.dumps(row), flush=True)
    dense = next((r for r in rows if r["model"] == "dense"), None)
    for r in rows:
        r["speed_vs_dense"] = r["tokens_per_s"] / dense["tokens_per_s"] if dense else None
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": args.steps, "rows": rows}
    write_json(args.out / "throughput.json", result)
    (args.out / "throughput_profile.txt").write_text("\n".join(profiles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
