"""A study's definition: the frozen, validated `StudySpec` and its parts (built by tuner.study.loader)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import yaml

from model.config import (
    PRESETS,
    ConfigError,
    Phase1Config,
)
from model.dense_config import DenseConfig
from tuner.study.readers import did_you_mean
from tuner.study.sizes import check_sizes
from tuner.study.space import SearchSpace, holds

# eval_tokens_per_s / eval_peak_gib: the measured inference pass after training, of the model as evaluated (LNS-
# converted for lns_enabled configs): its speed (tokens/s) and its own memory peak (GiB); docs/study-file.md, "Metrics".
METRICS = ("val_ppl", "peak_vram_gib", "params", "tokens_per_s", "eval_tokens_per_s", "eval_peak_gib")
INFERENCE_METRICS = ("eval_tokens_per_s", "eval_peak_gib")  # need the measured pass (TrialRequest.measure_inference)
MAXIMIZED_METRICS = ("tokens_per_s", "eval_tokens_per_s")  # a direction left out defaults to maximize for these
DIRECTIONS = ("minimize", "maximize")
SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")
# Options each sampler accepts besides `name` and `seed` (passed to the Optuna sampler by tuner.storage).
SAMPLER_OPTIONS: dict[str, dict[str, type]] = {
    "tpe": {"n_startup_trials": int, "multivariate": bool, "constant_liar": bool, "n_ei_candidates": int},
    "nsga2": {"population_size": int, "mutation_prob": float, "crossover_prob": float},
    "gp": {"n_startup_trials": int},
    "random": {},
    "grid": {},
}


TOP_KEYS = (
    "name",
    "objectives",
    "vram_ceiling_gib",
    "sampler",
    "n_trials",
    "model",
    "search_space",
    "data",
    "budget",
    "enqueue_presets",
    "pruning",
    "estimate",
    "baseline",
    "training",
)
PARAM_KEYS = ("type", "low", "high", "step", "log", "choices", "when")
# Set from vram_ceiling_gib, so the study and its configs cannot disagree about the budget.
DERIVED_FIELDS = {"target_vram_gb": "vram_ceiling_gib"}


@dataclass(frozen=True)
class ObjectiveSpec:
    """One objective of the study as the file states it (the callable objective is tuner.trial.objective.Objective)."""

    metric: str  # one of METRICS
    direction: str  # "minimize" | "maximize"


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "tpe"
    seed: int | None = None
    options: tuple[tuple[str, Any], ...] = ()  # per-sampler options (SAMPLER_OPTIONS), sorted

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class Budget:
    train_tokens: int  # tokens each trial trains on
    eval_tokens: int  # validation tokens per evaluation
    trial_timeout_s: float  # wall-clock seconds before a trial is stopped (`timeout`)


MIN_CURVE_TOKENS = 16  # tuner.analysis.curve.eval_points: 6 distinct log-spaced points from 1/16 of the budget


@dataclass(frozen=True)
class LearningCurvePruning:
    enabled: bool = False
    min_fraction: float = 0.25  # fraction of train_tokens before the first pruning decision
    confidence: float = 0.9  # probability the curve cannot reach the front before it is pruned


@dataclass(frozen=True)
class EstimateSettings:
    enabled: bool = True  # prune `predicted_over_ceiling` before touching the GPU
    margin: float = 0.05  # prune when predicted > ceiling * (1 + margin)


class StepMode(str, Enum):
    """How each trial's training step runs (model.train.train_and_evaluate's switches; model/fast.py says how).

    eager: the plain PyTorch step, what the VRAM estimator models. compile: each block and the loss chunk
    torch.compiled (any device). compile_graphs: compiled, and the forward + backward replayed from a CUDA graph
    (CUDA only). The compiled steps' first step spends about 30 s compiling and capturing (docs/step_time.md)."""

    EAGER = "eager"
    COMPILE = "compile"
    COMPILE_GRAPHS = "compile_graphs"

    @property
    def compile_step(self) -> bool:
        return self is not StepMode.EAGER

    @property
    def cuda_graph_step(self) -> bool:
        return self is StepMode.COMPILE_GRAPHS

    @property
    def needs_cuda(self) -> bool:
        return self.cuda_graph_step

    def device_problem(self, device: str) -> str | None:
        """Why this step cannot run on `device` ("cuda" | "cpu" | ...), as one line; None when it can."""
        if self.needs_cuda and device != "cuda":
            return (
                f"step {self.value} replays CUDA graphs and needs a CUDA device, but trials here run on {device}; "
                "use compile or eager on this machine, or run on a GPU"
            )
        return None


STEP_MODES = tuple(m.value for m in StepMode)


@dataclass(frozen=True)
class TrainingSettings:
    step: StepMode = StepMode.EAGER  # default eager: the step the estimator models and earlier studies recorded


@dataclass(frozen=True)
class StudySpec:
    name: str
    objectives: tuple[ObjectiveSpec, ...]
    vram_ceiling_gib: float
    sampler: SamplerSpec
    n_trials: int
    model: dict[str, Any]  # fixed Phase1Config fields (as written; target_vram_gb is derived)
    space: SearchSpace
    data: Any  # model.data.DataSource
    budget: Budget
    enqueue_presets: tuple[str, ...] = ()
    pruning: LearningCurvePruning = field(default_factory=LearningCurvePruning)
    estimate: EstimateSettings = field(default_factory=EstimateSettings)
    # The dense reference trial (model.dense_config.DenseConfig), enqueued once at creation; None: no reference.
    baseline: DenseConfig | None = None
    training: TrainingSettings = field(default_factory=TrainingSettings)
    path: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # normalised input (to_dict)

    @property
    def metric_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def measures_inference(self) -> bool:
        """Whether an objective needs the measured inference pass after training (INFERENCE_METRICS)."""
        return any(m in INFERENCE_METRICS for m in self.metric_names)

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def build_config(self, params: Mapping[str, Any]) -> Phase1Config:
        """Fixed model + sampled params -> validated Phase1Config (raises ConfigError)."""
        unknown = [k for k in params if k not in self.space]
        if unknown:
            k = unknown[0]
            hint = (
                f" (fixed under model: {k}: {self.model[k]!r})"
                if k in self.model
                else did_you_mean(k, self.space.names)
            )
            why = f"not a parameter of study {self.name!r}'s search space{hint}"
            raise ConfigError(f"{k}: {why}; parameters: {', '.join(self.space.names) or 'none'}")
        return Phase1Config.from_dict({**self.model, **dict(params), "target_vram_gb": float(self.vram_ceiling_gib)})

    def preset_params(self, preset: str) -> dict[str, Any]:
        """The preset's values of the active search-space parameters (what `enqueue_presets` enqueues)."""
        cfg = preset_values(preset, self.model)
        seen = dict(self.space.base)
        out: dict[str, Any] = {}
        for p in self.space.params:
            if holds(p.when, seen):
                seen[p.name] = out[p.name] = cfg[p.name]
        return out

    def to_dict(self) -> dict[str, Any]:
        """Normalised mapping (defaults filled, data path absolute) that spec_from_dict reads back identically."""
        return dict(self.raw)

    def to_yaml(self) -> str:
        return str(yaml.safe_dump(self.to_dict(), sort_keys=False))


def preset_values(name: str, model: Mapping[str, Any]) -> dict[str, Any]:
    """A built-in preset's field values as a study with fixed `model` would run them: a `None` gate width
    (meaning d_model // 4) is resolved with the study's d_model, so it can be enqueued into an int parameter."""
    cfg = PRESETS[name].to_dict()
    if cfg["ar_ssm_gate_hidden_dim"] is None:
        cfg["ar_ssm_gate_hidden_dim"] = max(1, int(model.get("d_model", cfg["d_model"])) // 4)
    return cfg


def baseline_shape(model: Mapping[str, Any], ceiling_gib: float) -> dict[str, Any]:
    """The Phase 1 shape and training settings a dense baseline copies (model.dense_config.dense_for's `shape`):
    the study's fixed model fields over Phase1Config's defaults. The learning rate only when the study fixes it: a
    default or searched Phase 1 rate is not the dense model's (DenseConfig's own default applies then)."""
    full = Phase1Config.from_dict({**model, "target_vram_gb": float(ceiling_gib)}).to_dict()
    return {k: v for k, v in full.items() if k != "learning_rate" or k in model}


def trial_trainable(cfg: Phase1Config) -> None:
    """Raise ConfigError when a trial could not train `cfg`. A trial trains an LNS config (lns_enabled: true) with LNS
    off, converts the trained model and evaluates the converted one (tuner.trial.runner), so LNS is allowed here;
    every other trainability rule of Phase1Config.check_trainable applies."""
    check_sizes(cfg)  # before anything walks the sizes (the estimator at vocab_size 1e9 ran for minutes)
    cfg.replace(lns_enabled=False).check_trainable()
