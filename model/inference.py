"""The measured inference pass: the validation pass of model/evaluate.py run on its own, after training, timed and
with its own memory peak, so a study can carry evaluation speed and footprint as objectives (LNS weights or float).

Shapes: B = batch_size, L = n_seq. Memory in GiB (2^30 bytes), time in seconds.
"""

from __future__ import annotations

import gc
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from model.config import Phase1Config
from model.data import TokenData
from model.dense_config import DenseConfig
from model.evaluate import evaluate_run
from model.memory import TensorMemoryTracker
from model.units import GIB


@dataclass(frozen=True)
class InferenceMeasure:
    """One measured validation pass.

    val_loss / val_ppl: as model.evaluate.evaluate computes them. eval_tokens: tokens scored. seconds: wall time of
    the pass (CUDA synchronised before each clock read). tokens_per_s: eval_tokens / seconds. peak_gib: the pass's
    memory peak; peak_kind says what it counts: "cuda_max_allocated" (torch's allocator peak, after its cache was
    emptied and its peak counter reset, so the trained model's leftovers are not in it) or "cpu_tensor_bytes"
    (model.memory.TensorMemoryTracker: the model's tensors plus everything the pass allocates)."""

    val_loss: float
    val_ppl: float
    eval_tokens: int
    seconds: float
    tokens_per_s: float
    peak_gib: float
    peak_kind: str


def measure_inference(
    model: torch.nn.Module,
    data: TokenData,
    eval_tokens: int,
    config: Phase1Config | DenseConfig,
    device: str | torch.device,
    *,
    eager: bool = False,
) -> InferenceMeasure:
    """Score the first ceil(eval_tokens / L) validation windows of `data.val` (model.evaluate.evaluate's windows) with
    `model` as it is (float, or converted to LNS), measuring that pass alone.

    First one untimed batch: the first call of a Triton kernel (the LNS matmul on CUDA) compiles and autotunes it,
    seconds that say nothing about the tile sizes' speed and that the disk cache makes depend on trial order; the
    training throughput leaves its first step out for the same reason. Then, on CUDA, the allocator's cache is
    emptied and its peak counter reset. The pass skips the representation-rank diagnostic (an SVD that is not
    inference). `eager`: run a torch.compiled model's blocks eagerly, as the trainer's evaluations do (compiling
    them again for evaluation would cost a minute)."""
    dev = torch.device(device)
    stance = torch.compiler.set_stance("force_eager") if eager else nullcontext()
    with stance:
        evaluate_run(model, data, config.batch_size * config.n_seq, config, dev, rank=False)  # the warm-up batch
        gc.collect()
        tracker = None
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        else:
            tracker = TensorMemoryTracker(dev.type)
            tracker.track([*model.parameters(), *model.buffers()])
        t0 = time.perf_counter()
        with tracker if tracker is not None else nullcontext():
            r = evaluate_run(model, data, eval_tokens, config, dev, rank=False)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
    if tracker is not None:
        peak_gib, kind = tracker.peak_bytes / GIB, "cpu_tensor_bytes"
    else:
        peak_gib, kind = torch.cuda.max_memory_allocated(dev) / GIB, "cuda_max_allocated"
    tokens = int(r["eval_tokens"])
    return InferenceMeasure(
        val_loss=float(r["val_loss"]),
        val_ppl=float(r["val_ppl"]),
        eval_tokens=tokens,
        seconds=seconds,
        tokens_per_s=tokens / max(seconds, 1e-9),
        peak_gib=peak_gib,
        peak_kind=kind,
    )
