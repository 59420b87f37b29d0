"""What bench/claims.py runs: the settings (full and --tiny), one setting changed from the preset per run key, the
jobs of bench/lm_runs.py's pool (ids q-KEY quality, s-KEY speed, i-KEY inference, k-scan), and their placement."""

from __future__ import annotations

# One setting changed from the preset per key (the guide's table rows; the preset's own value is "base").
VARIANTS: dict[str, dict] = {
    "base": {},
    "seed1": {"seed": 1},  # seed1: the seed-to-seed PPL spread every PPL comparison is read against
    "max_rank32": {"ar_ssm_max_rank": 32},
    "max_rank48": {"ar_ssm_max_rank": 48},
    "max_rank64": {"ar_ssm_max_rank": 64},
    "l1_0.0001": {"ar_ssm_l1_regularization": 1e-4},
    "l1_0.001": {"ar_ssm_l1_regularization": 1e-3},
    "htt8": {"htt_rank": 8},
    "htt16": {"htt_rank": 16},
    "htt32": {"htt_rank": 32},
    "htt64": {"htt_rank": 64},
    "phase_off": {"htt_phase_encoding": False},
    # both checkpointing switches off: the guide's "False" trains without any recomputation
    "ckpt_off": {"use_gradient_checkpointing": False, "checkpoint_ar_ssm": False},
    "fused_off": {"ar_ssm_use_fused_scan": False},
}
QUALITY = [
    "dense",
    "base",
    "seed1",
    "max_rank32",
    "max_rank48",
    "max_rank64",
    "l1_0.0001",
    "l1_0.001",
    "htt8",
    "htt16",
    "htt32",
    "htt64",
    "phase_off",
]
SPEED = ["base", "ckpt_off", "dense", "max_rank32", "max_rank48", "max_rank64", "phase_off", "fused_off"]  # run order
# The preset's batch (8) and one sequence (the report's inference batch); the scan at the preset's B, L and the
# guide's max_rank range.
FULL = {
    "preset": "8gb",
    "shape": {},
    "train_tokens": 3_000_000,
    "speed_steps": 24,
    "eval_tokens": 262_144,
    "data": {"kind": "python", "max_bytes": 128 * 2**20},
    "lr": 1e-3,
    "inference_batches": [1, 8],
    "batches_per_stage": 4,
    "scan_shapes": [[8, 2048, 16], [8, 2048, 32], [8, 2048, 64]],
    "scan_dtypes": ["bf16", "fp32"],
}
# CPU smoke run: shapes small enough that a run costs about a second once torch is imported (run with --serial:
# a process start per run would cost more than all the training).
TINY = {
    **FULL,
    "train_tokens": 6 * 2 * 32,
    "speed_steps": 3,
    "eval_tokens": 128,
    "data": {"kind": "stdlib", "max_bytes": 100_000},
    "inference_batches": [1, 2],
    "batches_per_stage": 1,
    "scan_shapes": [[2, 64, 16]],
    "shape": {
        "vocab_size": 300,
        "d_model": 32,
        "n_layers": 1,
        "n_seq": 32,
        "batch_size": 2,
        "dtype": "float32",
        "ar_ssm_use_fused_scan": False,
        "loss_chunk_size": 0,
    },
}


def phase1_config(s: dict, key: str) -> dict:
    from model.config import PRESETS

    changes = {**s["shape"], "learning_rate": s["lr"], **VARIANTS[key]}  # the variant's setting wins
    return PRESETS[s["preset"]].replace(**changes).to_dict()


def dense_config(s: dict) -> dict:
    from model.dense_config import dense_for

    return dense_for(phase1_config(s, "base")).to_dict()


def step_cost(config: dict, dense: bool) -> float:
    """Rough cost of one training token relative to the preset, only to balance GPUs: the dense model ran ~2.5x
    faster than the 8gb preset on an H100 (bench/results/quality.json); wider scans and HTT ranks cost more."""
    if dense:
        return 0.4
    return 1.0 + max(0, config["ar_ssm_max_rank"] - 16) / 128 + max(0, config["htt_rank"] - 12) / 256


def make_jobs(s: dict, cache_dir: str) -> list[dict]:
    """Every run of the measurement (ids q-*, s-*, i-*, k-scan), without placement."""
    common = {"data": s["data"], "cache_dir": cache_dir}
    base = phase1_config(s, "base")
    tokens_per_step = base["batch_size"] * base["n_seq"]
    jobs = []

    def cfg(key: str) -> tuple[str, dict]:
        return ("dense", dense_config(s)) if key == "dense" else ("phase1", phase1_config(s, key))

    for key in QUALITY:
        model, config = cfg(key)
        jobs.append(
            {
                "id": f"q-{key}",
                "kind": "quality",
                "key": key,
                "model": model,
                "config": config,
                "train_tokens": s["train_tokens"],
                "eval_tokens": s["eval_tokens"],
                "cost": s["train_tokens"] * step_cost(config, model == "dense"),
                **common,
            }
        )
    n = len(SPEED) + 3
    for i, key in enumerate(SPEED):  # cost: the speed GPU's queue runs in SPEED order, then inference, then scan
        model, config = cfg(key)
        jobs.append(
            {
                "id": f"s-{key}",
                "kind": "speed",
                "key": key,
                "model": model,
                "config": config,
                "train_tokens": s["speed_steps"] * tokens_per_step,
                "eval_tokens": tokens_per_step,
                "cost": float(n - i),
                **common,
            }
        )
    for i, key in enumerate(["base", "dense"]):
        model, config = cfg(key)
        jobs.append(
            {
                "id": f"i-{key}",
                "kind": "inference",
                "key": key,
                "model": model,
                "config": config,
                "script": "claims_probe.py",
                "mode": "inference",
                "batch_sizes": s["inference_batches"],
                "batches_per_stage": s["batches_per_stage"],
                "train_tokens": 0,
                "cost": 3.0 - i,
                **common,
            }
        )
    jobs.append(
        {
            "id": "k-scan",
            "kind": "scan",
            "key": "scan",
            "model": "scan",
            "script": "claims_probe.py",
            "mode": "scan",
            "scan_shapes": s["scan_shapes"],
            "dtypes": s["scan_dtypes"],
            "train_tokens": 0,
            "cost": 1.0,
            **common,
        }
    )
    return jobs


def place(jobs: list[dict], gpus: list, per_gpu: int | None) -> tuple[list, list[int]]:
    """Pin jobs to devices; returns (jobs, per_gpu counts). Two or more GPUs: speed, inference and scan runs one
    at a time on the first ("alone": true), quality runs balanced by cost over the others (all at once). One
    device: every job on it, `per_gpu` at a time (alone only when per_gpu is 1)."""
    if len(gpus) < 2:
        slots = per_gpu or 2
        for j in jobs:
            j["alone"] = slots == 1
        return jobs, [slots]
    speed, quality = gpus[0], gpus[1:]
    load = dict.fromkeys(quality, 0.0)
    count = dict.fromkeys(quality, 0)
    for j in sorted(jobs, key=lambda j: -j["cost"]):
        if j["kind"] == "quality":
            g = min(quality, key=lambda g: load[g])
            load[g] += j["cost"]
            count[g] += 1
            j.update(gpus=[g], alone=False)
        else:
            j.update(gpus=[speed], alone=True)
    return jobs, [1] + [max(1, per_gpu or count[g]) for g in quality]
