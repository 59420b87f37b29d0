"""Next-token cross-entropy over hidden states, optionally in chunks of positions so that the full [B, L, V]
logits never exist at once (the memory lever at V = 50k).

With chunk c in 1..L-1 each chunk computes its logits and CE sum inside torch.utils.checkpoint, so autograd keeps
only the chunk's input h (a view of the final hidden states) and recomputes the [B, c, V] logits in the backward;
without the checkpoint autograd would keep every chunk's logits and chunking would save nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100  # target id excluded from the loss


def ce_sum(logits_fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of next-token CE (fp32) over the non-ignored positions of h [B, c, D] with targets [B, c]."""
    logits = logits_fn(h)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


CeSum = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


def chunked_cross_entropy(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    h: torch.Tensor,
    targets: torch.Tensor,
    chunk: int,
    ce_fn: CeSum = ce_sum,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean CE in nats over non-ignored positions, logits [B, L, V] or None when chunked).

    h [B, L, D], targets [B, L] (-100 ignored); chunk 0 or >= L computes the whole logits once and returns them.
    ce_fn: what computes one chunk's CE sum (`ce_sum`, or a compiled `ce_sum`: model/fast.py).
    """
    L = targets.shape[1]
    n_valid = (targets != IGNORE_INDEX).sum().clamp(min=1)
    if chunk == 0 or chunk >= L:
        logits = logits_fn(h)
        ce = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return ce / n_valid, logits
    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, L, chunk):
        hc, tc = h[:, start : start + chunk], targets[:, start : start + chunk]
        if torch.is_grad_enabled():  # a memory matter whenever autograd records, training or not
            total = total + checkpoint(ce_fn, logits_fn, hc, tc, use_reentrant=False)
        else:
            total = total + ce_fn(logits_fn, hc, tc)
    return total / n_valid, None
