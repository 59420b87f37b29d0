"""Step-speed switches of the trainer: torch.compile of each block and of one loss chunk (`compile_for_speed`), the
head's GEMM fused into the loss (`use_fused_loss`), and the forward + backward replayed from a CUDA graph
(`cuda_graph_step`, CUDA only: model/graph_step.py).

Why: at the presets' shapes (D 1024, 12 layers, L 2048, B 8, bf16) the eager step launches thousands of small
kernels and the GPU idles about half the time (issue 13). Compiling the per-layer block fuses its elementwise work
(norms, gate math, casts, residual adds) into a few Triton kernels; compiling one loss chunk (head GEMMs, bias,
the fp32 upcast and the cross-entropy) lets inductor fuse the upcast into the log-softmax instead of writing a fp32
copy of the [B, c, V] logits. Each block is compiled, not the whole model: the blocks share one graph (their
parameters are graph inputs), so compile time does not grow with depth, and the model's Python around them (the
diagnostics, the checkpoint of each block, the chunk loop) stays eager and unchanged.

The Triton scan enters a compiled region as two opaque torch.library ops (kernels/scan.py), the same kernels and
tiles as eager. Shapes are static (`dynamic=False`): a trial's batch shape never changes; the evaluation's other
batch size compiles once more.

Saved activations: inside a checkpointed block nothing changes (only its input is kept); unchecked blocks (24gb)
let inductor's partitioner choose what to save (it recomputes cheap elementwise results rather than saving them),
so the saved bytes may differ from `model.lm.saved_bytes_per_token`: bench/throughput.py reports the NVML peak of
both paths side by side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from model.loss import ce_sum, softmax_xent_grad, softmax_xent_grad_functional

if TYPE_CHECKING:
    from model.dense import DenseLM
    from model.lm import Phase1LM


# What train_and_evaluate does on CUDA when compile_step / fused_loss / cuda_graph_step are left at None: today's
# eager step until bench/throughput.py on an H100 shows a switch faster at every preset with no more NVML peak (issue
# 13). On other devices all stay off (the CPU memory tracker cannot see inside compiled code; graphs are CUDA's).
COMPILE_STEP_ON_CUDA = False
FUSED_LOSS_ON_CUDA = False
GRAPH_STEP_ON_CUDA = False


def resolve_switches(
    device_type: str, compile_step: bool | None, fused_loss: bool | None, cuda_graph_step: bool | None = None
) -> tuple[bool, bool, bool]:
    """(compile_step, fused_loss, cuda_graph_step) for a run on `device_type`: an explicit bool wins, None takes the
    default above. cuda_graph_step=True on another device raises ValueError (CUDA graphs exist on CUDA only)."""
    cuda = device_type == "cuda"
    if cuda_graph_step and not cuda:
        raise ValueError(f"cuda_graph_step: CUDA graphs need a CUDA device, got {device_type!r}; leave it off there")
    return (
        (cuda and COMPILE_STEP_ON_CUDA) if compile_step is None else compile_step,
        (cuda and FUSED_LOSS_ON_CUDA) if fused_loss is None else fused_loss,
        (cuda and GRAPH_STEP_ON_CUDA) if cuda_graph_step is None else cuda_graph_step,
    )


def compile_for_speed(model: Phase1LM | DenseLM) -> None:
    """Compile `model`'s blocks (`model.blocks`, each in place with nn.Module.compile) and its loss chunk
    (`model.ce_fn`). Works for Phase1LM and DenseLM; outputs and gradients equal the eager
    model's within float rounding (tests/model/test_fast.py)."""
    if not isinstance(getattr(model, "blocks", None), nn.ModuleList) or not hasattr(model, "ce_fn"):
        raise TypeError(f"compile_for_speed: {type(model).__name__} has no `blocks` ModuleList and `ce_fn`")
    for block in model.blocks:
        block.compile(dynamic=False)
    model.ce_fn = torch.compile(ce_sum, dynamic=False)


def use_fused_loss(model: Phase1LM | DenseLM, compiled: bool = False) -> None:
    """Train with the head fused into the loss (model/loss.py `linear_cross_entropy`): the tied table built once
    per step (not per loss chunk, twice), no recomputed logits, the gradients of the head computed chunk by chunk
    in the forward. Phase1LM's low-rank head keeps the chunked path. Evaluation (no grad) keeps the chunked path.
    compiled: the per-chunk softmax gradient torch.compiled (the trainer does so when it compiles the step).

    Memory against the checkpointed chunks: kept from the forward to the backward are dh [N, D] and dW [V, D] in
    the autocast dtype and db [V] in fp32 (instead of h [N, D]); during the loss's forward, dW in fp32, the table
    [V, D] in the autocast dtype and, per chunk of c positions, the [B*c, V] logits in fp32 plus an autocast-dtype
    copy (the chunked path's backward holds ~(ac + 12) * B * c * V bytes per chunk). At the presets' shapes that is
    ~1.5 GB in the loss against ~2.9 GB; `model.lm.saved_bytes_per_token` does not model this path."""
    if compiled:  # the chunk's softmax gradient as a few fused kernels, no fp32 [B*c, V] copy (loss.py says how)
        model.fused_loss_grad = torch.compile(softmax_xent_grad_functional, dynamic=False)
    else:
        model.fused_loss_grad = softmax_xent_grad
