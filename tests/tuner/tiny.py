"""Small valid inputs every tuner test starts from: the tiny study (BASE, a spec dict: copy it or `mutate` it, then
change what the test is about; `spec(...)` loads it), the smallest study a trial really trains (`trial_spec`), and a
stored device calibration (`calibration`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]  # the repository root

BASE = {
    "name": "unit",
    "objectives": [
        {"metric": "val_ppl", "direction": "minimize"},
        {"metric": "peak_vram_gib", "direction": "minimize"},
    ],
    "vram_ceiling_gib": 8,
    "sampler": {"name": "tpe", "seed": 0},
    "n_trials": 4,
    "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_seq": 64},
    "search_space": {
        "ar_ssm_max_rank": {"type": "int", "low": 8, "high": 32, "step": 8},
        "ar_ssm_min_rank": {"type": "int", "low": 2, "high": 8},
        "ar_ssm_l1_regularization": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "use_gradient_checkpointing": {"type": "categorical", "choices": [True, False]},
        "checkpoint_ar_ssm": {
            "type": "categorical",
            "choices": [True, False],
            "when": {"use_gradient_checkpointing": False},
        },
    },
    "data": {"source": "stdlib"},
    "budget": {"train_tokens": 1000, "eval_tokens": 500, "trial_timeout_s": 60},
}


def write(tmp_path: Path, data: Any, name: str = "study.yaml") -> Path:
    """`data` (a mapping, or YAML text) written as a study file."""
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return p


def spec(**changes: Any) -> Any:
    """BASE loaded as a StudySpec, with top-level keys replaced by `changes` (a `mutate` dict: `spec(**mutate(...))`
    for nested ones). Loaded with `where="test.yaml"`, the name one-line errors then start with."""
    from tuner.study.loader import spec_from_dict

    d = copy.deepcopy(BASE)
    d.update(changes)
    return spec_from_dict(d, where="test.yaml")


def trial_spec(
    metrics: tuple[str, ...] = ("val_ppl", "peak_vram_gib"), *, ceiling: float = 1.0, estimate: bool = False
) -> Any:
    """The smallest study a trial really trains (vocab 512, one layer of width 32, 2048 tokens on stdlib text; one
    searched parameter, learning_rate), with the objectives `metrics` (MAXIMIZED_METRICS maximised), the ceiling in GiB
    and the pre-flight estimate on or off."""
    from tuner.study.loader import spec_from_dict

    return spec_from_dict(trial_study(metrics, ceiling=ceiling, estimate=estimate), check_paths=False)


def trial_study(
    metrics: tuple[str, ...] = ("val_ppl", "peak_vram_gib"), *, ceiling: float = 1.0, estimate: bool = False
) -> dict[str, Any]:
    """trial_spec's study as the dict a study file holds (for tests that write the file)."""
    from tuner.study.spec import MAXIMIZED_METRICS

    return {
        "name": "objective_unit",
        "objectives": [
            {"metric": m, "direction": "maximize" if m in MAXIMIZED_METRICS else "minimize"} for m in metrics
        ],
        "vram_ceiling_gib": ceiling,
        "sampler": {"name": "random", "seed": 0},
        "n_trials": 4,
        "model": {
            "vocab_size": TRIAL_VOCAB,
            "d_model": 32,
            "n_layers": 1,
            "n_seq": 64,
            "batch_size": 4,
            "dtype": "float32",
        },
        "search_space": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        "data": {"source": "stdlib", "max_bytes": 262144},
        "budget": {"train_tokens": 2048, "eval_tokens": 1024, "trial_timeout_s": 60},
        "estimate": {"enabled": estimate, "margin": 0.0},
    }


TRIAL_VOCAB = 512  # trial_spec's vocab_size: the val_ppl an over-ceiling trial records


def calibration(**changes: Any) -> Any:
    """A stored device calibration (tuner.vram.calibration.DeviceCalibration) of an H100, fields replaced by
    `changes`; GiB as everywhere."""
    from tuner.vram.calibration import DeviceCalibration

    base: dict[str, Any] = dict(
        device="NVIDIA H100 80GB HBM3",
        driver="570.1",
        torch="2.11.0",
        context_gib=0.6,
        outside_gib=0.74,
        workspace_gib=0.0625,
        cuda="13.0",
        measured_at="2026-11-24T00:00:00+00:00",
    )
    return DeviceCalibration(**{**base, **changes})


def mutate(**changes: Any) -> dict[str, Any]:
    """A copy of BASE with `a__b=value` set (or removed with _DELETE)."""
    d = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        keys = dotted.split("__")
        node = d
        for k in keys[:-1]:
            node = node[k]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return d


_DELETE = object()  # mutate(key=_DELETE) removes the key
SS = "search_space"


def complete_result(val_ppl: float = 300.0, peak: float = 0.25) -> dict[str, Any]:
    """A child's "complete" message for a trial that trained (CPU, 8 steps), as TrialOutcome.from_dict reads it."""
    return {
        "kind": "complete",
        "wall_s": 1.0,
        "device_name": "cpu",
        "result": {
            "val_ppl": val_ppl,
            "val_loss": 5.7,
            "peak_torch_gib": peak,
            "tokens_per_s": 1234.0,
            "param_counts": {"embedding": 10, "ar_ssm": 20, "ffn": 30, "head": 0, "norm": 4},
            "diagnostics": {"effective_rank": 7.5, "gate_sparsity": 0.25, "det_min": 0.9},
            "steps": 8,
            "train_time_s": 0.5,
            "curve": [{"tokens": 2048, "val_ppl": val_ppl}],
        },
    }
