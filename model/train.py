"""Train one Phase 1 model for a token budget and measure it: validation loss/PPL, peak memory, throughput.

`train_and_evaluate(config, data, train_tokens=..., eval_tokens=..., device=...)` is what a tuning trial runs;
`evaluate(model, data, eval_tokens, config, device)` is the validation pass on its own. Shapes: B = batch_size,
L = n_seq, D = d_model, V = vocab_size. Memory in GiB (2^30 bytes).

Precision (`config.dtype`): parameters and optimizer state stay float32; the forward pass runs under autocast.
"float32": no autocast. "bfloat16": autocast to bfloat16 on CUDA and CPU. "float16": autocast to float16 with a
GradScaler (dynamic loss scaling against fp16 gradient underflow) on CUDA and, equally, on CPU (PyTorch supports both
there), so a CPU run exercises the same fp16 path as the GPU rather than silently switching to bfloat16.

Threads: this module never calls `torch.set_num_threads`; the process running trials chooses (on a shared CPU, one
thread per trial process avoids OpenMP oversubscription, which made tiny CPU steps 5-10x slower in our tests).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from model.config import Phase1Config
from model.data import DataRepeatWarning, TokenData
from model.dense_config import DenseConfig
from model.evaluate import autocast_for, evaluate_run, token_windows
from model.evaluate import evaluate as evaluate  # re-exported: the public API names both here
from model.fast import resolve_switches
from model.graph_step import GraphedStep
from model.memory import TensorMemoryTracker
from model.train_checks import check_inputs
from model.train_records import EvalInfo as EvalInfo  # re-exported with the others: the public API
from model.train_records import RunTimes as RunTimes
from model.train_records import StepInfo as StepInfo
from model.train_records import TrainResult as TrainResult
from model.units import GIB

if TYPE_CHECKING:
    from model.dense import DenseLM
    from model.lm import Phase1LM

# Warmup: Adam's second-moment estimates are noise for the first steps, so full-size updates there can throw the
# HTT cores and the scan decays far off; a short linear ramp (5% of the run, at most 200 steps) avoids it without
# eating a short tuning budget. Cosine decay to 10% of the peak: a schedule fitted to the run's own length gives
# (close to) the best final loss for a fixed token budget, so trials are compared at their best.
WARMUP_FRACTION = 0.05
MAX_WARMUP_STEPS = 200
FINAL_LR_FRACTION = 0.1
# AdamW as in GPT-style LM training; which parameters decay and each group's rate: model/optim.py (param_groups).
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.1


# --- public API ------------------------------------------------------------------------------------------------------


def train_and_evaluate(
    config: Phase1Config | DenseConfig,
    data: TokenData,
    *,
    train_tokens: int,
    eval_tokens: int,
    device: str | torch.device,
    on_step: Callable[[StepInfo], None] | None = None,
    eval_points: Iterable[int] = (),
    on_eval: Callable[[EvalInfo], None] | None = None,
    return_model: bool = False,
    progress: Callable[[str], None] | bool | None = None,
    compile_step: bool | None = None,
    fused_loss: bool | None = None,
    cuda_graph_step: bool | None = None,
    times: RunTimes | None = None,
) -> TrainResult:
    """Build `config`'s model (Phase 1, or the dense baseline for a DenseConfig), train it on `data.train` for
    ceil(train_tokens / (B*L)) steps, evaluate on `data.val`.

    Batches: B windows of L+1 tokens at uniform random offsets (a numpy generator seeded by `config.seed`; inputs are
    the first L, targets the last L). `eval_points`: training-token counts (each <= train_tokens) at which validation is
    measured mid-run and passed to `on_eval`; an exception raised by `on_step` or `on_eval` propagates (the tuner stops
    a trial that way). `progress`: a callable receiving a status line about every 10% of the run, or True to print
    them to stderr. `compile_step`: torch.compile each block and the loss chunk (model/fast.py); `fused_loss`: the
    head's GEMM fused into the loss (model/fast.py `use_fused_loss`); `cuda_graph_step` (CUDA only): each step's
    forward and backward replayed from a CUDA graph after 2 eager steps (model/graph_step.py; diagnostics count the
    captures and replays). None takes model/fast.py's defaults (on CUDA: off until bench/throughput.py shows a switch
    faster at the presets' shapes with no more memory; elsewhere off). On CPU a compiled run's peak is not measured
    (peak_torch_gib 0, kind "unmeasured_compiled_cpu"). `times`: filled in as the run goes (build and evaluation
    seconds), also when it raises. Raises ConfigError (untrainable config, vocab mismatch), DataError (too little
    data for n_seq), ValueError (bad budgets, cuda_graph_step off CUDA), NumericalInstabilityError (from the
    stability monitor), GraphCaptureError (capture failed: no eager fallback).
    """
    t_call = time.perf_counter()
    times = times if times is not None else RunTimes()
    config.check_trainable()  # before anything is built: LNS models are inference only
    check_inputs(config, data, train_tokens, eval_tokens)
    dev = torch.device(device)
    compile_step, fused_loss, cuda_graph_step = resolve_switches(dev.type, compile_step, fused_loss, cuda_graph_step)
    tokens_per_step = config.batch_size * config.n_seq
    steps = math.ceil(train_tokens / tokens_per_step)
    points = sorted({int(p) for p in eval_points})
    if points and (points[0] < 1 or points[-1] > train_tokens):
        raise ValueError(f"eval_points: {points} must lie in 1 .. train_tokens = {train_tokens}")
    say = _progress_fn(progress)
    epochs = steps * tokens_per_step / data.n_train_tokens
    if epochs > 1.0:
        message = (
            f"train: {steps * tokens_per_step} training tokens is {epochs:.2f} epochs of the "
            f"{data.n_train_tokens} tokens in the training split: data repeats (raise data.max_bytes or use "
            "a larger corpus for a PPL on fresh text)"
        )
        say(message)
        warnings.warn(message, DataRepeatWarning, stacklevel=2)

    devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    # The CPU tracker is a TorchDispatchMode, under which torch.compile runs nothing compiled (dynamo steps aside):
    # a compiled CPU step (tests, bench --tiny) goes untracked rather than silently eager.
    track = dev.type != "cuda" and not compile_step
    tracker = TensorMemoryTracker(dev.type) if track else None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    # fork_rng: seed parameter init from config.seed without disturbing the caller's global RNG state.
    with torch.random.fork_rng(devices=devices), tracker if tracker is not None else nullcontext():
        torch.manual_seed(config.seed)
        if dev.type == "cuda":
            torch.cuda.manual_seed_all(config.seed)
        run = _Run(config, data, dev, steps, eval_tokens, say, compile_step, fused_loss, cuda_graph_step, times)
        times.build_s = time.perf_counter() - t_call
        curve, loop_s = run.train(points, on_step, on_eval)
        tokens_per_s = run.tokens_per_s(loop_s)
        final = run.final_eval(curve)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            peak_bytes, kind = torch.cuda.max_memory_allocated(dev), "cuda_max_allocated"
            reserved_gib = torch.cuda.max_memory_reserved(dev) / GIB
        else:
            peak_bytes, kind = (tracker.peak_bytes, "cpu_tensor_bytes") if tracker else (0, "unmeasured_compiled_cpu")
            reserved_gib = None
    diagnostics = run.diagnostics(final)
    say(
        f"train: done, val_loss {final['val_loss']:.4f} (ppl {final['val_ppl']:.2f}), "
        f"{tokens_per_s:.0f} tokens/s, peak {peak_bytes / GIB:.3f} GiB ({kind})"
    )
    return TrainResult(
        val_loss=final["val_loss"],
        val_ppl=final["val_ppl"],
        steps=steps,
        train_tokens=steps * tokens_per_step,
        tokens_per_s=tokens_per_s,
        train_time_s=loop_s,
        peak_torch_gib=peak_bytes / GIB,
        peak_memory_kind=kind,
        diagnostics=diagnostics,
        param_counts=dict(run.model.param_counts()),
        curve=curve,
        eval_tokens=final["eval_tokens"],
        device=str(dev),
        peak_reserved_gib=reserved_gib,
        epochs=epochs,
        model=run.model if return_model else None,
    )


# --- internals -------------------------------------------------------------------------------------------------------


class _Run:
    """The model, optimizer, schedule and batch generator of one training run, and what it measured."""

    def __init__(
        self,
        config: Phase1Config | DenseConfig,
        data: TokenData,
        dev: torch.device,
        steps: int,
        eval_tokens: int,
        say: Callable[[str], None],
        compile_step: bool = False,
        fused_loss: bool = False,
        cuda_graph_step: bool = False,
        times: RunTimes | None = None,
    ):
        from model.optim import param_groups
        from model.stability import StabilityMonitor

        self.config, self.data, self.dev, self.steps, self.say = config, data, dev, steps, say
        self.eval_tokens = eval_tokens
        self.times = times if times is not None else RunTimes()
        self._last_eval: tuple[int, dict[str, Any]] | None = None  # (tokens, result) of the latest evaluation
        self.model: Phase1LM | DenseLM
        if isinstance(config, DenseConfig):
            from model.dense import build_dense_model

            self.model = build_dense_model(config).to(dev)
            # the baseline has no AR-SSM to check: gradient clipping and the non-finite checks only
            self.monitor = StabilityMonitor.gradients_only(config.gradient_norm_threshold)
        else:
            from model.lm import build_model, unigram_counts

            lm = build_model(config).to(dev)
            self.monitor = StabilityMonitor(config)
            lm.init_output_bias(unigram_counts(data.train, config.vocab_size).to(dev))
            self.model = lm
        self.model.train()
        self.compiled = compile_step
        if compile_step:
            from model.fast import compile_for_speed

            compile_for_speed(self.model)
        if fused_loss:
            from model.fast import use_fused_loss

            use_fused_loss(self.model, compiled=compile_step)
        # the dense baseline's parameters are untagged: matrices and its tables decayed at the base rate, norms
        # and biases undecayed (the usual GPT recipe); Phase 1's tags give its table and phases their own rates
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, config.learning_rate, WEIGHT_DECAY),
            lr=config.learning_rate,
            betas=BETAS,
            fused=dev.type == "cuda",
        )
        self.warmup = max(1, min(MAX_WARMUP_STEPS, round(WARMUP_FRACTION * steps)))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=config.dtype == "float16")
        self.rng = np.random.default_rng(config.seed)
        self.checks: list[dict[str, float]] = []
        self.first_loss = self.last_loss = float("nan")
        self.eval_s = 0.0  # seconds spent in mid-run evaluations (excluded from the loop time)
        self.first_step_s = float("nan")
        self.graphed = GraphedStep(self.model, self._forward_backward) if cuda_graph_step else None
        self.kept_out: Any = None  # the eager step's last LMOutput (_forward_backward)
        self.step_fn = self.graphed or self._forward_backward

    def _lr_factor(self, step: int) -> float:
        """LR multiplier for optimizer step `step` (0-based): linear warmup, then cosine to FINAL_LR_FRACTION."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _batch(self) -> torch.Tensor:
        c = self.config
        starts = self.rng.integers(0, self.data.n_train_tokens - (c.n_seq + 1) + 1, size=c.batch_size)
        return token_windows(self.data.train, starts, c.n_seq + 1, self.dev)

    def _forward_backward(self, win: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward and backward of one batch win [B, L+1] -> (loss, ce_loss, aux_loss), detached 0-dim tensors. Reads
        nothing back to the host, so model/graph_step.py can capture it."""
        with autocast_for(self.config, self.dev):
            out = self.model(win[:, :-1], win[:, 1:])
        if self.graphed is None:  # eager: the output lives until the next forward returns, as the VRAM estimator
            self.kept_out = out  # models it (tuner/vram/estimate: previous_step_output)
        self.scaler.scale(out.loss).backward()
        return out.loss.detach(), out.ce_loss.detach(), torch.as_tensor(out.aux_loss).detach()

    def train(self, points: list[int], on_step, on_eval) -> tuple[list[dict[str, float]], float]:
        c, model = self.config, self.model
        tokens_per_step = c.batch_size * c.n_seq
        curve: list[dict[str, float]] = []
        pending = list(points)
        report_every = max(1, self.steps // 10)
        self.say(f"train: {self.steps} steps of {tokens_per_step} tokens on {self.dev}")
        t_start = time.perf_counter()
        for step in range(1, self.steps + 1):
            loss, ce_loss, aux_loss = self.step_fn(self._batch())
            # non-finite loss: every step, raises (after the backward: the step itself never reads the host)
            self.monitor.check_finite(loss, step)
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            # fp16: an overflowing step has a non-finite norm; the scaler skips that step and lowers its scale
            grad_norm = float(self.monitor.clip_gradients(model, allow_nonfinite=self.scaler.is_enabled()))
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.graphed is None or not self.graphed.live:  # a live graph owns the .grad buffers
                self.optimizer.zero_grad(set_to_none=True)
            # every step: parameters finite; det/Schatten only when enabled and step % stability_check_every == 0
            measured = self.monitor.check(model, step)
            if measured:
                self.checks.append(dict(measured))
            loss_f = self.last_loss = float(loss.float())
            tokens = step * tokens_per_step
            if step == 1:
                self.first_loss = loss_f
                if self.dev.type == "cuda":
                    torch.cuda.synchronize(self.dev)
                self.first_step_s = time.perf_counter() - t_start
            elapsed = time.perf_counter() - t_start - self.eval_s
            if on_step is not None:
                on_step(
                    StepInfo(
                        step=step,
                        tokens=tokens,
                        loss=loss_f,
                        ce_loss=float(ce_loss.float()),
                        aux_loss=float(aux_loss.float()),
                        grad_norm=grad_norm,
                        lr=lr,
                        elapsed_s=elapsed,
                    )
                )
            if step % report_every == 0:
                self.say(f"train: step {step}/{self.steps}, loss {loss_f:.4f}, {tokens / max(elapsed, 1e-9):.0f} tok/s")
            if pending and tokens >= pending[0]:
                while pending and tokens >= pending[0]:
                    pending.pop(0)
                t_eval = time.perf_counter()
                if self.dev.type == "cuda":
                    torch.cuda.synchronize(self.dev)
                info = self._eval_info(tokens)
                curve.append(info.to_dict())
                self.eval_s += time.perf_counter() - t_eval
                self.say(f"train: eval at {tokens} tokens: val_loss {info.val_loss:.4f}, ppl {info.val_ppl:.2f}")
                if on_eval is not None:
                    on_eval(info)
        self.kept_out = None
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        loop_s = time.perf_counter() - t_start - self.eval_s
        return curve, loop_s

    def tokens_per_s(self, loop_s: float) -> float:
        """Steady-state training throughput: the first step (Triton compilation, autotuning, allocator warm-up, a
        one-off cost of seconds on a GPU) is left out when there are more steps; evaluations are never counted."""
        tokens_per_step = self.config.batch_size * self.config.n_seq
        if self.steps > 1 and loop_s > self.first_step_s:
            return (self.steps - 1) * tokens_per_step / (loop_s - self.first_step_s)
        return self.steps * tokens_per_step / max(loop_s, 1e-9)

    def _evaluate(self) -> dict[str, Any]:
        # A compiled step's blocks would compile again for evaluation (eval mode, no grad, another batch shape): a
        # minute of compilation for a pass that runs a few times per trial, so evaluation runs them eagerly.
        stance = torch.compiler.set_stance("force_eager") if self.compiled else nullcontext()
        if self.graphed is not None:  # evaluation runs eagerly, outside the graph's pool: free the pool first
            self.graphed.release()
        t0 = time.perf_counter()
        try:
            with stance:
                return evaluate_run(self.model, self.data, self.eval_tokens, self.config, self.dev)
        finally:
            self.times.eval_s += time.perf_counter() - t0

    def _eval_info(self, tokens: int) -> EvalInfo:
        # mid-run evaluations score the same windows as the final one, so the curve's points are comparable
        r = self._evaluate()
        self._last_eval = (tokens, r)
        return EvalInfo(
            tokens=tokens, val_loss=r["val_loss"], val_ppl=r["val_ppl"], repr_effective_rank=r["repr_effective_rank"]
        )

    def final_eval(self, curve: list[dict[str, float]]) -> dict[str, Any]:
        """Validation after the last step; reuses a mid-run evaluation taken after that same step."""
        total_tokens = self.steps * self.config.batch_size * self.config.n_seq
        if self._last_eval is None or self._last_eval[0] != total_tokens:
            curve.append(self._eval_info(total_tokens).to_dict())  # sets _last_eval
        assert self._last_eval is not None
        return self._last_eval[1]

    def diagnostics(self, final: dict[str, Any]) -> dict[str, Any]:
        d: dict[str, Any] = dict(final["model_diagnostics"])  # effective_rank, gate_sparsity, ... on validation
        d["repr_effective_rank"] = final["repr_effective_rank"]
        d["grad_clip_fraction"] = float(self.monitor.clip_fraction)
        d["train_loss_first"] = self.first_loss
        d["train_loss_last"] = self.last_loss
        d["warmup_steps"] = self.warmup
        d["first_step_s"] = self.first_step_s
        d["stability_checks"] = len(self.checks)
        for key, pick in (("det_min", min), ("s1_max", max), ("s2_max", max)):
            values = [ch[key] for ch in self.checks if key in ch and ch[key] is not None]
            d[key] = float(pick(values)) if values else None
        if self.config.dtype == "float16":
            d["loss_scale_final"] = float(self.scaler.get_scale())
        if self.graphed is not None:
            d.update(self.graphed.counts())
        return d


def _progress_fn(progress: Callable[[str], None] | bool | None) -> Callable[[str], None]:
    if progress is True:
        return lambda line: print(line, file=sys.stderr, flush=True)
    if callable(progress):
        return progress
    return lambda _line: None
