"""The training step's forward and backward captured once into a CUDA graph and replayed every step: the trainer's
third speed switch, `cuda_graph_step` (model/fast.py), CUDA only.

Why: at the presets' shapes the Phase 1 step is bound by the host, not the GPU: ~6,500 kernel launches per eager
8gb step and ~3,200 compiled, with the GPU idle most of the step (docs/step_time.md). A replay launches the whole
forward and backward with one call. It replays the captured kernels with the captured arguments, so the step must
have static shapes (a trial's batch shape never changes), no host read inside it, and every tensor it reads at a
fixed address: the batch is copied into one input buffer, and the optimizer updates the parameters in place.

In the graph: the forward (autocast, checkpointing and the recomputation in the backward, the chunked or fused loss,
the HTT table, the Triton scan, the compiled blocks when compile_step is on) and the backward, which writes every
parameter's .grad. Not in it (eager after each replay, exactly as in the eager step): the stability monitor's host
reads and the clipping that depends on them, the GradScaler, the optimizer and the LR schedule, a few dozen launches.

Gradients: the capture starts from .grad = None, so the captured backward writes each gradient rather than adding to
it; afterwards .grad is the graph's own output buffer, refreshed by every replay, and must not be set to None while
the graph is live (`live`; the trainer skips zero_grad then).
Warm-up: the first `warmup_steps` calls run eagerly (real training steps) on the stream the capture will use, so
Triton's JIT, that stream's cuBLAS handles and workspaces, and torch.compile's compilation and autotuning all happen
before the capture, never inside it.
Memory: the graph keeps a private pool as large as the step's own peak (what the eager step frees and allocates
again, the pool keeps); torch.cuda.graph empties the allocator's cache before capturing, so the warm-up's blocks are
not held twice. Evaluation runs eagerly and cannot use the pool, so the trainer calls `release` before it and the
next step captures again (no warm-up then).
Python side effects do not replay: a tensor the forward assigns to a module attribute (the AR-SSM's `last_gate_mean`,
which the stability monitor reads) is assigned again after each replay, the capture's tensor, whose buffer the replay
has refreshed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# Eager calls before the capture: the first sets up everything lazy (Triton's JIT, cuBLAS, torch.compile), the second
# runs the step with all of it in place, as the capture will (a recompilation would show there, not in the capture).
WARMUP_STEPS = 2

StepFn = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


class GraphCaptureError(RuntimeError):
    """The step could not be captured into a CUDA graph (an op that reads the host, or one CUDA graphs forbid)."""


def module_tensor_attrs(model: nn.Module) -> dict[tuple[int, str], tuple[nn.Module, str, torch.Tensor]]:
    """Every plain tensor attribute of `model`'s modules (not parameters or buffers): {(id(module), name): (module,
    name, tensor)}. Comparing two of these shows which attributes a call assigned."""
    return {
        (id(m), name): (m, name, value)
        for m in model.modules()
        for name, value in vars(m).items()
        if isinstance(value, torch.Tensor)
    }


def assigned_between(
    before: dict[tuple[int, str], tuple[nn.Module, str, torch.Tensor]],
    after: dict[tuple[int, str], tuple[nn.Module, str, torch.Tensor]],
) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """The (module, name, tensor) of `after` whose tensor is not the one `before` held there (new or reassigned)."""
    return [entry for key, entry in after.items() if key not in before or before[key][2] is not entry[2]]


class GraphedStep:
    """Calls `fn(batch)`, the forward and backward of `model` on one batch returning detached tensors (the losses),
    eagerly for `warmup_steps` calls, then from a CUDA graph captured at the next call.

    batch: the step's input (a trainer passes ids [B, L+1] int64), the same shape, dtype and device at every call;
    it is copied into the graph's input buffer. Returns fn's outputs: after the capture, the same tensors every call,
    overwritten by each replay. Raises GraphCaptureError (one line, the cause chained) when the capture fails:
    there is no eager fallback.
    """

    def __init__(self, model: nn.Module, fn: StepFn, warmup_steps: int = WARMUP_STEPS):
        if not torch.cuda.is_available():
            raise GraphCaptureError("cuda_graph_step: CUDA graphs need a CUDA device; none is available")
        self.model, self.fn, self.warmup_left = model, fn, warmup_steps
        self.device = next(model.parameters()).device  # every call runs with it current (it may not be cuda:0)
        # warm-up and capture: one stream (the cuBLAS handle and workspace of that stream are set up in warm-up)
        self.stream = torch.cuda.Stream(device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.batch_buffer: torch.Tensor | None = None
        self.outputs: tuple[torch.Tensor, ...] = ()
        self.side_effects: list[tuple[nn.Module, str, torch.Tensor]] = []
        self.captures = 0
        self.replays = 0

    @property
    def live(self) -> bool:
        """True while a captured graph owns the parameters' .grad buffers (they must not be set to None)."""
        return self.graph is not None

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.cuda.device(self.device):
            if self.warmup_left > 0:
                self.warmup_left -= 1
                return self._eager_on_stream(batch)
            if self.graph is None:
                self._capture(batch)
            assert self.graph is not None and self.batch_buffer is not None
            self.batch_buffer.copy_(batch)
            self.graph.replay()
        self.replays += 1
        for module, name, tensor in self.side_effects:
            setattr(module, name, tensor)
        return self.outputs

    def release(self) -> None:
        """Free the graph and its memory pool (before an eager pass such as evaluation); the parameters' .grad become
        None, as after the eager step's zero_grad. The next call captures again."""
        if self.graph is None:
            return
        for p in self.model.parameters():
            p.grad = None
        self.graph.reset()
        self.graph, self.batch_buffer, self.outputs, self.side_effects = None, None, (), []
        with torch.cuda.device(self.device):
            torch.cuda.empty_cache()  # the pool's segments back to the driver, so NVML sees the eager pass alone

    def _eager_on_stream(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Waits both ways: the step sees the optimizer's last update, and what follows it sees the step's results
        # (which also orders the reuse of freed blocks between the two streams).
        current = torch.cuda.current_stream()
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            out = self.fn(batch)
        current.wait_stream(self.stream)
        return out

    def _capture(self, batch: torch.Tensor) -> None:
        for p in self.model.parameters():
            p.grad = None  # the captured backward then writes each gradient instead of adding to a stale one
        self.batch_buffer = batch.clone()
        graph = torch.cuda.CUDAGraph()
        before = module_tensor_attrs(self.model)
        try:
            # thread_local: another thread's CUDA call (an NVML sampler, a heartbeat) must not invalidate the capture
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                outputs = self.fn(self.batch_buffer)
        except Exception as e:
            self.batch_buffer = None
            for p in self.model.parameters():
                p.grad = None
            raise GraphCaptureError(f"cuda_graph_step: capturing the training step failed: {_cause(e)}") from e
        self.side_effects = assigned_between(before, module_tensor_attrs(self.model))
        self.graph, self.outputs = graph, tuple(outputs)
        self.captures += 1

    def counts(self) -> dict[str, Any]:
        """{"cuda_graph_captures", "cuda_graph_replays"}: proof the step ran from a graph (the trainer records it)."""
        return {"cuda_graph_captures": self.captures, "cuda_graph_replays": self.replays}


def _cause(e: BaseException) -> str:
    """One line naming `e` and, when ending the capture raised it while handling another error, that error first
    (the op that broke the capture)."""
    parts = [e.__context__, e] if e.__context__ is not None and e.__cause__ is None else [e]
    return "; then ".join(f"{type(x).__name__}: {(str(x).strip().splitlines() or [''])[0]}" for x in parts)
