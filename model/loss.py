"""Next-token cross-entropy over hidden states, optionally in chunks of positions so that the full [B, L, V]
logits never exist at once (the memory lever at V = 50k). `linear_cross_entropy` (below) fuses the head's GEMM into
the loss instead, for a head that is one weight matrix (the tied table, the dense baseline's embedding).

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
# one chunk of the fused loss: (logits, bias, targets, acc dtype) -> (CE sum, G, G's column sums or None)
XentGrad = Callable[
    [torch.Tensor, torch.Tensor | None, torch.Tensor, torch.dtype],
    tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
]


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
            # no RNG state to keep (model/lm.py _checkpointing says why)
            total = total + checkpoint(ce_fn, logits_fn, hc, tc, use_reentrant=False, preserve_rng_state=False)
        else:
            total = total + ce_fn(logits_fn, hc, tc)
    return total / n_valid, None


# --- fused head + loss (model/fast.py's fused_loss) ------------------------------------------------------------------


def softmax_xent_grad(logits: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, acc: torch.dtype):
    """One chunk of the fused loss: logits [c, V] (the GEMM's dtype), bias [V] or None, targets [c] (-100 ignored)
    -> (CE sum over the scored rows [] in acc, G = softmax - onehot [c, V] in the logits' dtype with ignored rows 0,
    G's column sums [V] in acc or None without a bias). Eager: in place on one acc-dtype copy of the logits."""
    x = logits.to(acc)
    if bias is not None:
        x += bias
    valid = targets != IGNORE_INDEX
    tgt = targets.clamp(min=0)[:, None]
    picked = x.gather(1, tgt)[:, 0]  # the target's logit [c]
    # softmax in place (torch.logsumexp would allocate a second [c, V]): one acc-dtype buffer per chunk
    peak = x.amax(dim=1, keepdim=True)
    probs = x.sub_(peak).exp_()
    denom = probs.sum(dim=1, keepdim=True)
    probs.div_(denom)
    ce = ((peak[:, 0] + denom[:, 0].log() - picked) * valid).sum()
    probs.scatter_add_(1, tgt, -valid.to(probs.dtype)[:, None])  # - onehot on the scored rows
    probs.mul_(valid[:, None])  # ignored rows: no gradient
    return ce, probs.to(logits.dtype), probs.sum(0) if bias is not None else None


def softmax_xent_grad_functional(logits, bias, targets, acc):
    """`softmax_xent_grad` written without in-place ops, for torch.compile (model/fast.py): inductor fuses it into a
    few kernels that read the logits and write G without materialising an acc-dtype [c, V] copy. Same results up
    to float rounding; eager it would allocate several [c, V] temporaries."""
    x = logits.to(acc)
    if bias is not None:
        x = x + bias
    valid = targets != IGNORE_INDEX
    tgt = targets.clamp(min=0)
    peak = x.amax(dim=1, keepdim=True)
    e = (x - peak).exp()
    denom = e.sum(dim=1, keepdim=True)
    picked = x.gather(1, tgt[:, None])[:, 0]
    ce = ((peak[:, 0] + denom[:, 0].log() - picked) * valid).sum()
    onehot = torch.arange(x.shape[1], device=x.device)[None, :] == tgt[:, None]
    probs = (e / denom - onehot.to(acc)) * valid[:, None].to(acc)
    return ce, probs.to(logits.dtype), probs.sum(0) if bias is not None else None


class _LinearCrossEntropy(torch.autograd.Function):
    """CE sum of logits = h W^T (+ b) and its gradients, both in the forward, chunk by chunk over positions.

    The loss is a scalar, so its gradient is known up to that scalar when the forward runs: each chunk's logits
    become G = softmax - onehot (`softmax_xent_grad`), then dh = G W and dW += G^T h right away, and the logits are
    freed. Saved for the backward: dh [N, D] and dW [V, D] in h's dtype (dW accumulated in fp32), db [V] fp32 (the
    backward only scales them). Against the checkpointed chunks of `chunked_cross_entropy`: one GEMM fewer per chunk
    (no recomputed logits) and one elementwise pass over the fp32 logits instead of several.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk, grad_fn):
        N, V = h.shape[0], weight.shape[0]
        acc = torch.float64 if h.dtype == torch.float64 else torch.float32  # softmax and sums (float64: tests)
        dh = torch.empty_like(h)
        dw = torch.zeros(weight.shape, dtype=acc, device=h.device)
        db = torch.zeros(V, dtype=acc, device=h.device) if bias is not None else None
        total = torch.zeros((), dtype=acc, device=h.device)
        for s in range(0, N, chunk):
            hc = h[s : s + chunk]
            ce, g, g_sum = grad_fn(hc @ weight.t(), bias, targets[s : s + chunk], acc)
            total += ce
            if db is not None:
                db += g_sum
            dh[s : s + chunk] = g @ weight
            dw += (g.t() @ hc).to(acc)
            del g
        # dW kept in the weight's dtype (the gradient autograd passes on is in it anyway): half the bytes of fp32
        ctx.save_for_backward(dh, dw.to(weight.dtype), db if db is not None else dw.new_empty(0))
        ctx.has_bias = bias is not None
        return total.float() if acc == torch.float32 else total

    @staticmethod
    def backward(ctx, grad):
        dh, dw, db = ctx.saved_tensors
        dbias = db * grad if ctx.has_bias else None
        return dh * grad.to(dh.dtype), dw * grad.to(dw.dtype), dbias, None, None, None


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk: int,
    grad_fn: XentGrad = softmax_xent_grad,
) -> torch.Tensor:
    """Mean next-token CE (nats) of logits = h weight^T + bias over the non-ignored positions, never holding more
    than `chunk` positions' [chunk, V] logits (chunk 0: all at once).

    h [..., D], weight [V, D] (both cast to the autocast dtype under autocast, else to h's dtype), bias [V] or None,
    targets [...] (-100 ignored). Gradients reach h, weight (and through it whatever built it: the HTT cores) and
    bias. Autocast is off inside: the GEMMs run in that dtype and the softmax in fp32, as the checkpointed path's do.
    grad_fn: a chunk's softmax gradient (`softmax_xent_grad`, or a compiled `softmax_xent_grad_functional`:
    model/fast.py).
    """
    D = h.shape[-1]
    # The GEMMs in the autocast dtype when autocast is on (h may be fp32: LayerNorm returns fp32 under autocast; the
    # first H100 run's dense rows ran these GEMMs in fp32 for that reason), else in h's dtype.
    device = h.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
    h2, t2 = h.reshape(-1, D).to(dtype), targets.reshape(-1)
    n_valid = (t2 != IGNORE_INDEX).sum().clamp(min=1)
    with torch.autocast(device_type=device, enabled=False):
        total = _LinearCrossEntropy.apply(
            h2, weight.to(h2.dtype), bias, t2, chunk if chunk > 0 else h2.shape[0], grad_fn
        )
    return total / n_valid
