"""`DenseConfig`: the dense baseline transformer's settings, validated once (imports no torch).

The baseline answers "what does the compression cost against a plain transformer": a GPT-style decoder of the
same width, depth, sequence length and vocabulary as the Phase 1 model it is compared with, trained by the same
trainer (model/train.py) on the same tokens. Shapes: B = batch_size, L = n_seq, D = d_model, V = vocab_size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_type_hints

from model.config import ConfigError, DType, describe_type, from_mapping, type_ok


@dataclass
class DenseConfig:
    """A GPT-style decoder: learned positions, pre-LayerNorm blocks (causal self-attention + 4D GELU MLP),
    tied input/output embedding. Training fields mean the same as Phase1Config's."""

    kind: Literal["dense"] = "dense"  # tells a preset or a stored trial which model family this is
    vocab_size: int = 50257  # V, tokens; >= 2
    d_model: int = 1024  # D, hidden width; divisible by n_heads
    n_layers: int = 12  # blocks; >= 1
    n_heads: int = 16  # attention heads; D / n_heads is the head width (64 at the defaults)
    n_seq: int = 2048  # L, training sequence length in tokens (also the number of learned positions)
    use_gradient_checkpointing: bool = False  # checkpoint each whole block (memory for recomputation)
    dtype: DType = "bfloat16"  # autocast dtype of the forward pass; parameters stay float32
    batch_size: int = 8  # B, sequences per step
    learning_rate: float = 3e-4  # AdamW peak learning rate
    loss_chunk_size: int = 512  # positions per cross-entropy chunk (bounds [B, chunk, V] logits); 0 = all
    gradient_norm_threshold: float = 1.0  # global grad-norm clip (the GPT-2/3 recipes' value)
    seed: int = 0  # parameter init and data order

    def __post_init__(self) -> None:
        for name, hint in get_type_hints(DenseConfig).items():
            value = getattr(self, name)
            if not type_ok(value, hint):
                raise ConfigError(f"{name}: {value!r} is not {describe_type(hint)}")
            if hint is float and isinstance(value, int):
                setattr(self, name, float(value))
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name}: {value!r} must be a finite number")
        for name, low in (
            ("vocab_size", 2),
            ("d_model", 8),
            ("n_layers", 1),
            ("n_heads", 1),
            ("n_seq", 2),
            ("batch_size", 1),
            ("loss_chunk_size", 0),
            ("seed", 0),
        ):
            if getattr(self, name) < low:
                raise ConfigError(f"{name}: {getattr(self, name)!r} is out of range (allowed: >= {low})")
        for name in ("learning_rate", "gradient_norm_threshold"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: {getattr(self, name)!r} is out of range (allowed: > 0)")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"n_heads: {self.n_heads} does not divide d_model = {self.d_model} (allowed: a divisor "
                "of d_model, e.g. d_model // 64)"
            )

    def check_trainable(self) -> None:
        """Every dense config trains (the trainer calls this on any config)."""

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    # --- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "baseline") -> DenseConfig:
        """Build from a mapping; unknown keys are an error naming the key (and the closest known one)."""
        return from_mapping(cls, data, where)

    def replace(self, **changes: Any) -> DenseConfig:
        return dataclasses.replace(self, **changes)


def dense_for(shape: Mapping[str, Any], **overrides: Any) -> DenseConfig:
    """The dense baseline matching a Phase 1 model's shape and training settings.

    `shape`: a mapping with any of vocab_size, d_model, n_layers, n_seq, batch_size, dtype, learning_rate,
    loss_chunk_size, seed (e.g. `Phase1Config.to_dict()`); other keys are ignored. Heads: one per 64 channels
    (GPT-2's head width), at least one. `overrides` win over both.
    """
    shared = (
        "vocab_size",
        "d_model",
        "n_layers",
        "n_seq",
        "batch_size",
        "dtype",
        "learning_rate",
        "loss_chunk_size",
        "seed",
    )
    values: dict[str, Any] = {k: shape[k] for k in shared if k in shape}
    d_model = int(overrides.get("d_model", values.get("d_model", DenseConfig.d_model)))
    heads = max(1, d_model // 64)
    while d_model % heads:  # the largest head count <= d_model / 64 that divides d_model
        heads -= 1
    values["n_heads"] = heads
    values.update(overrides)
    return DenseConfig(**values)


def dense_param_counts(config: DenseConfig) -> dict[str, int]:
    """Parameters by component, from the config alone (keys as `DenseLM.param_counts`) plus "total".

    embedding: token table V*D (tied: the head reuses it, so "head" is 0) + positions L*D; attention per layer:
    qkv 3D^2 + output D^2; mlp per layer: 4D^2 + 4D^2 (no biases in the linear maps); norm: two LayerNorms per
    block and a final one, weight and bias each (2D per norm).
    """
    V, D, L, n = config.vocab_size, config.d_model, config.n_seq, config.n_layers
    counts = {
        "embedding": V * D + L * D,
        "attention": n * 4 * D * D,
        "mlp": n * 8 * D * D,
        "norm": (2 * n + 1) * 2 * D,
        "head": 0,
    }
    counts["total"] = sum(counts.values())
    return counts
