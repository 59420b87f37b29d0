"""The validation pass of model/train.py: consecutive windows of the validation tokens, scored once each.

Shapes: B = batch_size, L = n_seq. Used by the trainer (after and during training) and on its own (`evaluate`).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from model.config import Phase1Config
from model.data import TokenData
from model.dense_config import DenseConfig
from model.diagnostics import representation_effective_rank


def evaluate(
    model: torch.nn.Module,
    data: TokenData,
    eval_tokens: int,
    config: Phase1Config | DenseConfig,
    device: str | torch.device,
) -> tuple[float, float]:
    """Mean validation cross-entropy over the first ceil(eval_tokens / L) windows of `data.val` -> (val_loss, val_ppl).

    Windows are consecutive and non-overlapping (inputs val[kL : kL+L], targets shifted by one), so every scored token
    is scored once and the result is deterministic; capped to the windows `data.val` holds.
    """
    result = evaluate_run(model, data, eval_tokens, config, torch.device(device))
    return result["val_loss"], result["val_ppl"]


def autocast_for(config: Phase1Config | DenseConfig, dev: torch.device):
    """The forward's autocast context for `config.dtype` (none for float32)."""
    if config.dtype == "float32":
        return nullcontext()
    return torch.autocast(dev.type, dtype=getattr(torch, config.dtype))


def token_windows(tokens: np.ndarray, starts: np.ndarray, length: int, dev: torch.device) -> torch.Tensor:
    """tokens[s : s + length] for each start -> int64 [len(starts), length] on `dev`."""
    idx = starts[:, None] + np.arange(length)[None, :]
    batch = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int32))
    # the int64 cast is a torch op, so the CPU memory tracker counts the batch
    return batch.to(dev, non_blocking=True).long()


def evaluate_run(
    model: torch.nn.Module,
    data: TokenData,
    eval_tokens: int,
    config: Phase1Config | DenseConfig,
    dev: torch.device,
    *,
    rank: bool = True,
) -> dict[str, Any]:
    """The validation pass `evaluate` describes, with what the trainer records besides the loss: the representation
    effective rank of the first batch (NaN when `rank` is off: model/inference.py times the pass without that SVD),
    the scored token count, the model's diagnostics averaged over tokens."""
    L = config.n_seq
    n_windows = min(math.ceil(eval_tokens / L), (data.n_val_tokens - 1) // L)
    starts = np.arange(n_windows, dtype=np.int64) * L
    was_training = model.training
    model.eval()
    total, count, repr_rank = 0.0, 0, float("nan")
    diag_sums: dict[str, float] = {}
    try:
        with torch.no_grad(), autocast_for(config, dev):
            for b0 in range(0, n_windows, config.batch_size):
                win = token_windows(data.val, starts[b0 : b0 + config.batch_size], L + 1, dev)
                out = model(win[:, :-1], win[:, 1:])
                n = win.shape[0] * L
                total += float(out.ce_loss.float()) * n
                count += n
                for k, v in (out.diagnostics or {}).items():
                    diag_sums[k] = diag_sums.get(k, 0.0) + float(v) * n
                if b0 == 0 and rank:  # the fixed validation batch: the first one
                    repr_rank = representation_effective_rank(out.hidden.reshape(-1, out.hidden.shape[-1]))
    finally:
        model.train(was_training)
    val_loss = total / count
    return {
        "val_loss": val_loss,
        "val_ppl": math.exp(val_loss) if val_loss < 700 else float("inf"),
        "repr_effective_rank": repr_rank,
        "eval_tokens": count,
        "model_diagnostics": {k: v / count for k, v in diag_sums.items()},
    }
