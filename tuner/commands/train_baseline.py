"""`tuner train --baseline dense [--preset NAME|FILE | --study FILE] [shape flags]`: the dense reference model
alone, through the same child, trainer and measurements as `tuner train --preset`.

Its shape (model.dense_config.dense_for): the preset's Phase 1 shape, else the --study file's `baseline:` (or its
fixed model), else DenseConfig's defaults; the shape flags override each field. The learning rate is DenseConfig's
default (3e-4) unless --learning-rate or the study's baseline sets it: a Phase 1 preset's rate was tuned for Phase 1.
The VRAM ceiling: --vram-ceiling-gib, else the preset's target_vram_gb or the study's vram_ceiling_gib, else 8 GiB.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

# flag (without --) -> DenseConfig field, with its type
SHAPE_FLAGS: dict[str, type] = {
    "vocab_size": int,
    "d_model": int,
    "n_layers": int,
    "n_heads": int,
    "n_seq": int,
    "batch_size": int,
    "learning_rate": float,
}
DEFAULT_CEILING_GIB = 8.0  # Phase1Config's default target_vram_gb


@dataclass
class BaselineRun:
    """What `train` needs to run the baseline: the config, the ceiling (GiB) and where it came from (`source`,
    and `provenance`: data / train_tokens / eval_tokens a preset recorded, for train's settings resolution)."""

    config: Any  # model.dense_config.DenseConfig
    ceiling_gib: float
    source: str
    provenance: dict[str, Any] = field(default_factory=dict)


def add_baseline_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", choices=("dense",), default=None, help="train the dense reference model instead")
    for name, kind in SHAPE_FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, help="with --baseline")
    p.add_argument("--vram-ceiling-gib", type=float, default=None, help="with --baseline: the ceiling, GiB")


def shape_flags_given(args: argparse.Namespace) -> list[str]:
    return [f"--{n.replace('_', '-')}" for n in (*SHAPE_FLAGS, "vram_ceiling_gib") if getattr(args, n) is not None]


def baseline_run(args: argparse.Namespace) -> BaselineRun:
    """Build the baseline's DenseConfig from --preset / --study / defaults and the shape flags (see module doc)."""
    from model.config import ConfigError
    from model.dense_config import dense_for
    from tuner.errors import TunerError

    shape: dict[str, Any] = {}
    ceiling: float | None = None
    provenance: dict[str, Any] = {}
    source = "dense baseline (DenseConfig defaults)"
    base = None
    if args.preset is not None:
        from tuner.study.preset import load_preset

        preset = load_preset(args.preset)
        shape = {k: v for k, v in preset.config.to_dict().items() if k != "learning_rate"}
        ceiling = float(preset.config.target_vram_gb)
        provenance = {
            k: preset.provenance[k] for k in ("data", "train_tokens", "eval_tokens") if k in preset.provenance
        }
        source = f"dense baseline of {preset.source}"
    elif args.study is not None:
        from tuner.study.loader import load_spec
        from tuner.study.spec import baseline_shape

        spec = load_spec(args.study)
        base = spec.baseline
        shape = baseline_shape(spec.model, spec.vram_ceiling_gib)
        ceiling = float(spec.vram_ceiling_gib)
        source = f"dense baseline of {args.study}"
    overrides = {k: getattr(args, k) for k in SHAPE_FLAGS if getattr(args, k) is not None}
    if base is not None and "d_model" in overrides and "n_heads" not in overrides:
        overrides["n_heads"] = dense_for({}, d_model=overrides["d_model"]).n_heads  # the study's heads fit its width
    try:
        config = base.replace(**overrides) if base is not None else dense_for(shape, **overrides)
    except ConfigError as exc:
        raise TunerError(f"train --baseline dense: {exc}; fix the flag or the preset") from None
    if args.vram_ceiling_gib is not None:
        if not args.vram_ceiling_gib > 0:
            raise TunerError(f"--vram-ceiling-gib: {args.vram_ceiling_gib} must be > 0 (GiB)")
        ceiling = float(args.vram_ceiling_gib)
    return BaselineRun(config, ceiling if ceiling is not None else DEFAULT_CEILING_GIB, source, provenance)
