"""What a training run reports (model/train.py): per step (`StepInfo`), per validation (`EvalInfo`), and at the end
(`TrainResult`). Losses in nats per token, memory in GiB (2^30 bytes), times in seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class StepInfo:
    """One optimizer step, given to `on_step`. Losses are this step's training batch; tokens = tokens trained so far."""

    step: int  # 1-based
    tokens: int
    loss: float  # ce_loss + aux_loss
    ce_loss: float  # nats per token
    aux_loss: float
    grad_norm: float  # global gradient norm before clipping
    lr: float  # learning rate used by this step
    elapsed_s: float  # training-loop seconds so far (mid-run evaluations excluded)


@dataclass
class EvalInfo:
    """One validation measurement, given to `on_eval`. tokens = training tokens seen when it was taken (the first
    multiple of B*L at or past the requested eval point)."""

    tokens: int
    val_loss: float  # mean cross-entropy, nats per token
    val_ppl: float  # exp(val_loss)
    repr_effective_rank: float  # of the final hidden states [B*L, D] on the first validation batch

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class RunTimes:
    """Where a run's seconds went, filled in as it goes (so a run stopped by an exception still tells): build_s,
    from the call to the model, optimizer and schedule being ready (None: the run stopped before that); eval_s,
    every validation pass (mid-run and final). The rest of the run is training steps."""

    build_s: float | None = None
    eval_s: float = 0.0


@dataclass
class TrainResult:
    """What one run measured. peak_torch_gib: on CUDA `torch.cuda.max_memory_allocated` over the whole call (build,
    training, evaluations); on CPU the peak of live tensor bytes counted by `model.memory.TensorMemoryTracker`. On CPU
    that tracker runs Python code on every op, so CPU tokens_per_s carries its overhead (~1.5x slower at tiny shapes,
    single thread) and is only comparable between CPU runs."""

    val_loss: float
    val_ppl: float
    steps: int
    train_tokens: int  # tokens actually trained: steps * B * L
    tokens_per_s: float  # steady-state training loop: first step, evaluations and model build excluded
    train_time_s: float
    peak_torch_gib: float
    peak_memory_kind: str  # "cuda_max_allocated" | "cpu_tensor_bytes" | "unmeasured_compiled_cpu" (peak 0)
    diagnostics: dict[str, Any]
    param_counts: dict[str, int]
    curve: list[dict[str, float]]  # EvalInfo dicts, mid-run points and the final evaluation
    eval_tokens: int  # validation tokens actually scored
    device: str
    # CUDA only: torch.cuda.max_memory_reserved over the call (the caching allocator's high-water mark; the VRAM
    # estimator's calibration learns its allocator gap from it). None on CPU, where no such allocator exists.
    peak_reserved_gib: float | None = None
    # training tokens / tokens in the training split: above 1 the run saw some data more than once (a warning
    # is issued then), so its PPL is not that of a run on fresh text
    epochs: float = 0.0
    model: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (without the model)."""
        d = {k: v for k, v in asdict(self).items() if k != "model"}
        return d
