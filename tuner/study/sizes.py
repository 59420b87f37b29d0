"""Sizes no GPU could hold, refused when a study or preset is loaded, before any estimator or worker runs.

Two kinds of bound:
- FIELD_LIMITS: the fields the VRAM estimator's running time grows with (it walks the vocabulary in table chunks and
  the layers one by one: vocab_size 1e9 took over 40 s). Their limits are far beyond any model trained on one GPU
  (the largest tokenizers have about 256k tokens, the deepest models a few hundred layers) and keep the estimate
  well under a second.
- memory floors: lower bounds on what one training step must hold in any case (the weights in 16 bits; one 16-bit
  activation [batch, seq, d_model] per layer for the backward; one fp32 cross-entropy chunk [batch, rows, vocab]).
  A config whose floor exceeds MAX_GPU_GIB fits no GPU and is refused with the fields that make it.
"""

from __future__ import annotations

from model.config import ConfigError, Phase1Config
from model.shapes import block_param_tensors, head_param_tensors, htt_param_tensors
from tuner.units import GIB

MAX_GPU_GIB = 1024  # no GPU holds 1 TiB (the largest hold 141-192 GiB): a floor above it can never fit
FIELD_LIMITS = {"vocab_size": 2**22, "n_layers": 1024}


def _param_count(cfg: Phase1Config) -> int:
    """sum(model.shapes.param_tensors(cfg)) without listing every layer's tensors (this runs for each corner of a
    search space, up to 20,000 times per study file)."""
    return (
        sum(head_param_tensors(cfg))
        + sum(htt_param_tensors(cfg))
        + cfg.n_layers * sum(block_param_tensors(cfg))
        + cfg.d_model
    )


def memory_floors(cfg: Phase1Config) -> dict[str, tuple[int, str, str]]:
    """{what: (bytes, the field named in the error, the fields that make it)}: lower bounds of one training step's
    memory (see the module docstring). Integers throughout: sizes from a hostile file may be beyond a float."""
    chunked = 0 < cfg.loss_chunk_size < cfg.n_seq
    rows = cfg.loss_chunk_size if chunked else cfg.n_seq
    return {
        "the weights in 16 bits": (2 * _param_count(cfg), "d_model", "d_model, n_layers, the ranks, vocab_size"),
        "one 16-bit activation per layer": (
            2 * cfg.n_layers * cfg.batch_size * cfg.n_seq * cfg.d_model,
            "batch_size",
            "n_layers x batch_size x n_seq x d_model",
        ),
        "one fp32 cross-entropy chunk": (
            4 * cfg.batch_size * rows * cfg.vocab_size,
            "vocab_size",
            "batch_size x loss_chunk_size (or n_seq) x vocab_size",
        ),
    }


def check_sizes(cfg: Phase1Config) -> None:
    """Raise ConfigError `field: problem` when `cfg` is beyond any GPU (FIELD_LIMITS first: they bound the time the
    floors and the estimator take)."""
    for name, limit in FIELD_LIMITS.items():
        value = getattr(cfg, name)
        if value > limit:
            raise ConfigError(
                f"{name}: {value} is out of range (allowed: up to {limit}; no single-GPU model comes near it)"
            )
    for what, (nbytes, key, fields) in memory_floors(cfg).items():
        if nbytes > MAX_GPU_GIB * GIB:
            try:
                gib = f"{nbytes / GIB:.3g}"
            except OverflowError:
                gib = "over 1e308"
            raise ConfigError(
                f"{key}: {what} alone need {gib} GiB ({fields}), more than any GPU holds (limit {MAX_GPU_GIB} GiB)"
            )
