"""Study files: safe YAML -> a frozen, fully validated `StudySpec`, before anything touches storage or a GPU.

Every problem is one line, `FILE: key.path: problem; fix` (SpecError). The format (issue 4), with defaults:

    name: quickstart                    # required; letters, digits, _ . -
    objectives:                         # default: val_ppl minimize, peak_vram_gib minimize; an omitted
                                        # direction is minimize, except tokens_per_s: maximize
      - {metric: val_ppl, direction: minimize}   # metrics: val_ppl, peak_vram_gib, params, tokens_per_s
    vram_ceiling_gib: 8                 # required, GiB (2^30 bytes); becomes the configs' target_vram_gb
    sampler: {name: tpe, seed: 0}       # tpe | nsga2 | gp | random | grid, plus per-sampler options
    n_trials: 20                        # trials one `tuner run` / worker executes
    model: {d_model: 64}                # fixed Phase1Config fields (validated by building a Phase1Config)
    search_space:                       # Phase1Config fields; types must fit the field's type
      ar_ssm_max_rank: {type: int, low: 8, high: 64, step: 8}
      ar_ssm_l1_regularization: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      htt_phase_encoding: {type: categorical, choices: [true, false]}
      checkpoint_htt: {type: categorical, choices: [true, false], when: {use_gradient_checkpointing: false}}
    data: {source: stdlib}              # | {source: files, path: DIR} | {source: hf, hf_name: ..., hf_split: ...}
                                        # a relative path is relative to the study file's folder
    budget: {train_tokens: 200000, eval_tokens: 50000, trial_timeout_s: 600}
    enqueue_presets: [8gb]              # model.PRESETS names, run first (their search-space fields only)
    pruning: {learning_curve: {enabled: false, min_fraction: 0.25, confidence: 0.9}}
    estimate: {enabled: true, margin: 0.05}

`when:` maps a search-space parameter or a Phase1Config field to a value (or a list of values); the parameter
is sampled only when all conditions hold, otherwise the fixed/default value applies. Impossible combinations
are decided here, not per trial: every corner of the space (each numeric parameter at its lowest and highest
reachable value, every categorical choice, conditions applied) must build a trainable Phase1Config, and every
value of each int/categorical parameter must pass the field's own checks. Phase1Config's cross-field rules
are monotone inequalities (min_rank <= max_rank, ffn_rank <= 4 * d_model), so corners decide them; a trial
that still fails validation is recorded by the objective as `invalid_config` (a safety net, not a design path).
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

import yaml

from model.config import PRESETS, ConfigError, Phase1Config, describe_type, field_types, type_ok
from tuner.errors import SpecError

METRICS = ("val_ppl", "peak_vram_gib", "params", "tokens_per_s")
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
TOP_KEYS = ("name", "objectives", "vram_ceiling_gib", "sampler", "n_trials", "model", "search_space", "data",
            "budget", "enqueue_presets", "pruning", "estimate")
PARAM_KEYS = ("type", "low", "high", "step", "log", "choices", "when")
# Set from vram_ceiling_gib, so the study and its configs cannot disagree about the budget.
DERIVED_FIELDS = {"target_vram_gb": "vram_ceiling_gib"}
_CORNER_LIMIT = 20_000  # corner combinations checked exhaustively; beyond it a seeded sample of this size


# --- the spec ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Objective:
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


MIN_CURVE_TOKENS = 16  # tuner.curve.eval_points: 6 distinct log-spaced points from 1/16 of the budget


@dataclass(frozen=True)
class LearningCurvePruning:
    enabled: bool = False
    min_fraction: float = 0.25  # fraction of train_tokens before the first pruning decision
    confidence: float = 0.9  # probability the curve cannot reach the front before it is pruned


@dataclass(frozen=True)
class EstimateSettings:
    enabled: bool = True  # prune `predicted_over_ceiling` before touching the GPU
    margin: float = 0.05  # prune when predicted > ceiling * (1 + margin)


@dataclass(frozen=True)
class Param:
    """One search-space parameter. `when`: ((key, allowed values), ...) all of which must hold."""

    name: str
    type: Literal["int", "float", "categorical"]
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def distribution(self):
        """The Optuna distribution (optuna imported lazily: spec loading does not need it)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        if self.type == "float":
            return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)
        return CategoricalDistribution(list(self.choices))

    @property
    def top(self) -> Any:
        """Highest value this parameter can take (int: the last step below `high`)."""
        if self.type == "int":
            step = int(self.step or 1)
            return int(self.low) + (int(self.high) - int(self.low)) // step * step
        return self.high

    def values(self, limit: int | None = None) -> list[Any]:
        """Every value (int/categorical) or the two ends (float); ints with > limit values give their ends."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "float":
            return [self.low, self.high]
        step = int(self.step or 1)
        n = (self.top - int(self.low)) // step + 1
        if limit is not None and n > limit:
            return [int(self.low), self.top]
        return list(range(int(self.low), self.top + 1, step))

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not (self.low <= value <= self.high):
            return False
        if self.type == "int":
            return isinstance(value, int) and (value - int(self.low)) % int(self.step or 1) == 0
        if self.step is not None:
            k = (value - self.low) / self.step
            return abs(k - round(k)) < 1e-9
        return True


def _holds(when: tuple[tuple[str, tuple[Any, ...]], ...], values: Mapping[str, Any]) -> bool:
    return all(any(values.get(k) == v and type(values.get(k)) is type(v) for v in allowed) for k, allowed in when)


@dataclass(frozen=True)
class SearchSpace:
    """Parameters in sampling order (a parameter after every parameter its `when` names)."""

    params: tuple[Param, ...] = ()
    base: tuple[tuple[str, Any], ...] = ()  # fixed/default values of fields that conditions read

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def get(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def active(self, values: Mapping[str, Any]) -> list[Param]:
        """Parameters whose conditions hold given the (partial) values chosen so far plus the fixed ones."""
        seen = dict(self.base) | dict(values)
        return [p for p in self.params if _holds(p.when, seen)]

    def suggest(self, trial) -> dict[str, Any]:
        """Sample every active parameter through `trial.suggest_*`; returns {field: value} (inactive ones absent)."""
        seen: dict[str, Any] = dict(self.base)
        out: dict[str, Any] = {}
        for p in self.params:
            if not _holds(p.when, seen):
                continue
            if p.type == "int":
                value = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            elif p.type == "float":
                value = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
            else:
                value = trial.suggest_categorical(p.name, list(p.choices))
            seen[p.name] = out[p.name] = value
        return out

    def grid(self) -> dict[str, list[Any]]:
        """Every value of every parameter, for GridSampler (only valid for a space without floats or `when`)."""
        out = {}
        for p in self.params:
            if p.type == "float":
                n = int(round((p.high - p.low) / p.step))
                out[p.name] = [p.low + i * p.step for i in range(n + 1)]
            else:
                out[p.name] = p.values()
        return out


@dataclass(frozen=True)
class StudySpec:
    name: str
    objectives: tuple[Objective, ...]
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
    path: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # normalised input (to_dict)

    @property
    def metric_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def build_config(self, params: Mapping[str, Any]) -> Phase1Config:
        """Fixed model + sampled params -> validated Phase1Config (raises ConfigError)."""
        unknown = [k for k in params if k not in self.space]
        if unknown:
            raise ConfigError(f"{unknown[0]}: not a parameter of study {self.name!r}'s search space")
        return Phase1Config.from_dict({**self.model, **dict(params), "target_vram_gb": float(self.vram_ceiling_gib)})

    def preset_params(self, preset: str) -> dict[str, Any]:
        """The preset's values of the active search-space parameters (what `enqueue_presets` enqueues)."""
        cfg = preset_values(preset, self.model)
        seen = dict(self.space.base)
        out: dict[str, Any] = {}
        for p in self.space.params:
            if _holds(p.when, seen):
                seen[p.name] = out[p.name] = cfg[p.name]
        return out

    def to_dict(self) -> dict[str, Any]:
        """Normalised mapping (defaults filled, data path absolute) that spec_from_dict reads back identically."""
        return dict(self.raw)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --- loading -------------------------------------------------------------------------------------------------

def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file (yaml.safe_load only). Raises SpecError `FILE: key: problem; fix`."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: file not found; pass the path of a study YAML such as studies/quickstart.yaml")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise SpecError(f"{p}: {at}invalid YAML ({problem}); fix the syntax") from None
    except UnicodeDecodeError:
        raise SpecError(f"{p}: not UTF-8 text; save the study file as UTF-8") from None
    return spec_from_dict(data, where=str(p), base_dir=p.resolve().parent, path=str(p))


def spec_from_dict(data: Any, where: str = "<spec>", *, base_dir: str | Path | None = None,
                   check_paths: bool = True, path: str | None = None) -> StudySpec:
    """Validate a mapping into a StudySpec. `base_dir` resolves a relative data path (default: cwd);
    `check_paths=False` skips the data-path existence check (a stored spec read on a machine without the data)."""
    return _Loader(where, Path(base_dir) if base_dir else Path.cwd(), check_paths).load(data, path)


def _did_you_mean(key: str, known) -> str:
    close = difflib.get_close_matches(str(key), sorted(map(str, known)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fmt(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip() if not isinstance(
        v, str) else repr(v)


class _Loader:
    def __init__(self, where: str, base_dir: Path, check_paths: bool):
        self.where, self.base_dir, self.check_paths = where, base_dir, check_paths
        self.types = field_types()

    def fail(self, key: str, problem: str, fix: str) -> SpecError:
        return SpecError(f"{self.where}: {key}: {problem}; {fix}" if key else f"{self.where}: {problem}; {fix}")

    # small typed readers -----------------------------------------------------------------------------
    def mapping(self, v: Any, key: str, allowed) -> dict[str, Any]:
        if not isinstance(v, Mapping):
            raise self.fail(key, f"expected a mapping, got {_fmt(v)}", "write `key: value` pairs")
        for k in v:
            if k not in allowed:
                raise self.fail(f"{key}.{k}" if key else str(k), f"unknown key{_did_you_mean(k, allowed)}",
                                "allowed keys: " + ", ".join(allowed))
        return dict(v)

    def number(self, v: Any, key: str, *, integer: bool = False, low: float | None = None,
               high: float | None = None, strict_low: bool = False, strict_high: bool = False) -> Any:
        kind = "an integer" if integer else "a number"
        if isinstance(v, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", v.strip()):
            raise self.fail(key, f"{v!r} is a string, not a number (YAML 1.1 reads exponents without a dot as text)",
                            f"write {float(v)!r} or put a dot in the mantissa (1.0e-4)")
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or (isinstance(v, float) and not math.isfinite(v)):
            if integer and isinstance(v, float) and v.is_integer():
                raise self.fail(key, f"{v!r} is not an integer", f"write {int(v)}")
            raise self.fail(key, f"{_fmt(v)} is not {kind}", f"write {kind}")
        if low is not None and (v <= low if strict_low else v < low):
            raise self.fail(key, f"{v!r} is out of range", f"use a value {'>' if strict_low else '>='} {low}")
        if high is not None and (v >= high if strict_high else v > high):
            raise self.fail(key, f"{v!r} is out of range", f"use a value {'<' if strict_high else '<='} {high}")
        return v

    def boolean(self, v: Any, key: str) -> bool:
        if not isinstance(v, bool):
            raise self.fail(key, f"{_fmt(v)} is not true or false", "write true or false")
        return v

    def choice(self, v: Any, key: str, allowed) -> str:
        if v not in allowed or not isinstance(v, str):
            raise self.fail(key, f"{_fmt(v)} is not allowed{_did_you_mean(v, allowed)}",
                            "use one of: " + ", ".join(allowed))
        return v

    # sections -----------------------------------------------------------------------------------------
    def load(self, data: Any, path: str | None) -> StudySpec:
        if data is None:
            raise self.fail("", "the file is empty", "start from studies/quickstart.yaml")
        top = self.mapping(data, "", TOP_KEYS)
        for required in ("name", "vram_ceiling_gib", "budget"):
            if required not in top:
                raise self.fail(required, "missing", f"add `{required}:` (see studies/quickstart.yaml)")
        name = top["name"]
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
            raise self.fail("name", f"{_fmt(name)} is not a study name",
                            "use letters, digits, '_', '.' or '-', starting with a letter or digit")
        objectives = self.objectives(top.get("objectives"))
        ceiling = float(self.number(top["vram_ceiling_gib"], "vram_ceiling_gib", low=0, strict_low=True))
        sampler = self.sampler(top.get("sampler", {"name": "tpe"}))
        n_trials = self.number(top.get("n_trials", 20), "n_trials", integer=True, low=1)
        model = self.model(top.get("model", {}) or {}, ceiling)
        self._model = model
        space = self.space(top.get("search_space", {}) or {}, model)
        if sampler.name == "grid":
            self.check_grid(space)
        data_source, data_raw = self.data(top.get("data", {"source": "stdlib"}))
        budget = self.budget(top["budget"])
        presets = self.presets(top.get("enqueue_presets", []) or [], space)
        pruning = self.pruning(top.get("pruning", {}) or {})
        if pruning.enabled and budget.train_tokens < MIN_CURVE_TOKENS:
            raise self.fail("pruning.learning_curve.enabled", f"true with budget.train_tokens = "
                            f"{budget.train_tokens}; the learning curve needs log-spaced evaluations from 1/16 of "
                            "the budget", f"raise train_tokens to >= {MIN_CURVE_TOKENS} or set enabled: false")
        estimate = self.estimate(top.get("estimate", {}) or {})
        self.check_space(space, model, ceiling)
        raw = {
            "name": name,
            "objectives": [{"metric": o.metric, "direction": o.direction} for o in objectives],
            "vram_ceiling_gib": ceiling,
            "sampler": {"name": sampler.name, "seed": sampler.seed, **sampler.kwargs},
            "n_trials": n_trials,
            "model": dict(model),
            "search_space": {p.name: _param_dict(p) for p in space.params},
            "data": data_raw,
            "budget": {"train_tokens": budget.train_tokens, "eval_tokens": budget.eval_tokens,
                       "trial_timeout_s": budget.trial_timeout_s},
            "enqueue_presets": list(presets),
            "pruning": {"learning_curve": {"enabled": pruning.enabled, "min_fraction": pruning.min_fraction,
                                           "confidence": pruning.confidence}},
            "estimate": {"enabled": estimate.enabled, "margin": estimate.margin},
        }
        spec = StudySpec(name=name, objectives=objectives, vram_ceiling_gib=ceiling, sampler=sampler,
                         n_trials=n_trials, model=model, space=space, data=data_source, budget=budget,
                         enqueue_presets=presets, pruning=pruning, estimate=estimate, path=path, raw=raw)
        return spec

    def objectives(self, v: Any) -> tuple[Objective, ...]:
        if v is None:
            return (Objective("val_ppl", "minimize"), Objective("peak_vram_gib", "minimize"))
        if not isinstance(v, list) or not v:
            raise self.fail("objectives", f"{_fmt(v)} is not a non-empty list",
                            "write e.g. [{metric: val_ppl, direction: minimize}]")
        out, seen = [], set()
        for i, item in enumerate(v):
            key = f"objectives[{i}]"
            m = self.mapping(item, key, ("metric", "direction"))
            if "metric" not in m:
                raise self.fail(f"{key}.metric", "missing", "add `metric:` (" + ", ".join(METRICS) + ")")
            metric = self.choice(m["metric"], f"{key}.metric", METRICS)
            default = "maximize" if metric == "tokens_per_s" else "minimize"  # the natural sense of each metric
            direction = self.choice(m.get("direction", default), f"{key}.direction", DIRECTIONS)
            if metric in seen:
                raise self.fail(f"{key}.metric", f"{metric} is listed twice", "list each metric once")
            seen.add(metric)
            out.append(Objective(metric, direction))
        return tuple(out)

    def sampler(self, v: Any) -> SamplerSpec:
        if isinstance(v, str):
            v = {"name": v}
        m = self.mapping(v, "sampler", ("name", "seed", *sorted({k for o in SAMPLER_OPTIONS.values() for k in o})))
        name = self.choice(m.get("name", "tpe"), "sampler.name", SAMPLERS)
        seed = m.get("seed")
        if seed is not None:
            seed = self.number(seed, "sampler.seed", integer=True, low=0)
        opts = {}
        for k, val in m.items():
            if k in ("name", "seed"):
                continue
            if k not in SAMPLER_OPTIONS[name]:
                allowed = ", ".join(["name", "seed", *SAMPLER_OPTIONS[name]])
                raise self.fail(f"sampler.{k}", f"not an option of the {name} sampler", f"allowed keys: {allowed}")
            kind = SAMPLER_OPTIONS[name][k]
            if kind is bool:
                opts[k] = self.boolean(val, f"sampler.{k}")
            elif kind is int:
                opts[k] = self.number(val, f"sampler.{k}", integer=True, low=2 if k == "population_size" else 0)
            else:
                opts[k] = float(self.number(val, f"sampler.{k}", low=0, high=1))
        return SamplerSpec(name, seed, tuple(sorted(opts.items())))

    def config_error(self, exc: ConfigError, prefix: str, fix: str) -> SpecError:
        msg = str(exc)
        return SpecError(f"{self.where}: {prefix}{msg}; {fix}")

    def model(self, v: Any, ceiling: float) -> dict[str, Any]:
        m = self.mapping(v, "model", tuple(self.types))
        for k in m:
            if k in DERIVED_FIELDS:
                raise self.fail(f"model.{k}", f"is set from {DERIVED_FIELDS[k]}", f"remove it from model:")
        try:
            cfg = Phase1Config.from_dict({**m, "target_vram_gb": ceiling}, where="model")
        except ConfigError as exc:
            raise self.config_error(exc, "model." if not str(exc).startswith("model") else "",
                                    "fix the value under model:") from None
        try:
            trial_trainable(cfg)
        except ConfigError as exc:
            raise self.config_error(exc, "model.", "studies train their trials") from None
        return {k: getattr(cfg, k) for k in m}  # ints given for float fields come back as floats

    def space(self, v: Any, model: dict[str, Any]) -> SearchSpace:
        if not isinstance(v, Mapping):
            raise self.fail("search_space", f"expected a mapping of parameters, got {_fmt(v)}",
                            "write `field: {type: int, low: .., high: ..}` entries")
        params: dict[str, Param] = {}
        for name, body in v.items():
            key = f"search_space.{name}"
            if name not in self.types:
                raise self.fail(key, f"not a Phase1Config field{_did_you_mean(name, self.types)}",
                                "use a field of model/config.py")
            if name in DERIVED_FIELDS:
                raise self.fail(key, f"is set from {DERIVED_FIELDS[name]}", "remove it from search_space:")
            if name in model:
                raise self.fail(key, "also fixed under model:", "remove it from one of the two sections")
            params[name] = self.param(name, body, key)
        # conditions: keys are parameters or Phase1Config fields; values fit the field's type
        for p in params.values():
            for k, allowed in p.when:
                key = f"search_space.{p.name}.when.{k}"
                if k == p.name:
                    raise self.fail(key, "a parameter cannot depend on itself", "remove this condition")
                if k not in self.types:
                    raise self.fail(key, f"not a parameter or Phase1Config field{_did_you_mean(k, self.types)}",
                                    "name a search_space parameter or a model field")
                for a in allowed:
                    if not type_ok(a, self.types[k]):
                        raise self.fail(key, f"{_fmt(a)} is not {describe_type(self.types[k])}",
                                        f"compare with a value {k} can take")
        order = self.order(params)
        base = {k: model.get(k, getattr(Phase1Config(), k)) for p in order for k, _ in p.when if k not in params}
        space = SearchSpace(tuple(order), tuple(sorted(base.items())))
        # a condition on a fixed field (or on a parameter's impossible value) that never holds: a dead parameter
        for p in order:
            for k, allowed in p.when:
                reachable = params[k].values(limit=10_000) if k in params else [base[k]]
                if params.get(k) is not None and params[k].type == "float":
                    continue  # a float equality condition is legal but undecidable here
                if not any(any(r == a and type(r) is type(a) for a in allowed) for r in reachable):
                    src = f"search_space.{k}" if k in params else (f"model.{k}" if k in model else f"default {k}")
                    raise self.fail(f"search_space.{p.name}.when.{k}",
                                    f"never holds ({src} is {_fmt(reachable if len(reachable) > 1 else reachable[0])})",
                                    f"remove the condition, or search/fix {k} so it can be {_fmt(list(allowed))}")
        return space

    def param(self, name: str, body: Any, key: str) -> Param:
        m = self.mapping(body, key, PARAM_KEYS)
        hint = self.types[name]
        if "type" not in m:
            raise self.fail(f"{key}.type", "missing", "add `type: int`, `type: float` or `type: categorical`")
        kind = self.choice(m["type"], f"{key}.type", ("int", "float", "categorical"))
        when = self.when(m["when"], f"{key}.when") if "when" in m else ()
        if kind == "categorical":
            for k in ("low", "high", "step", "log"):
                if k in m:
                    raise self.fail(f"{key}.{k}", "not used by a categorical parameter", "list values under choices:")
            choices = m.get("choices")
            if not isinstance(choices, list) or not choices:
                raise self.fail(f"{key}.choices", f"{_fmt(choices)} is not a non-empty list",
                                "write choices: [a, b, ...]")
            for i, c in enumerate(choices):
                if not isinstance(c, (bool, int, float, str)) and c is not None:
                    raise self.fail(f"{key}.choices[{i}]", f"{_fmt(c)} is not a scalar", "use plain values")
                if not type_ok(c, hint):
                    raise self.fail(f"{key}.choices[{i}]", f"{_fmt(c)} is not {describe_type(hint)}",
                                    f"use values of {name}'s type")
            if len({(type(c), c) for c in choices}) != len(choices):
                raise self.fail(f"{key}.choices", "contains a value twice", "list each choice once")
            return Param(name, "categorical", choices=tuple(choices), when=when)
        if "choices" in m:
            raise self.fail(f"{key}.choices", f"not used by a {kind} parameter", "use low/high, or type: categorical")
        base_types = {a for a in (get_args(hint) or (hint,)) if a is not type(None)}
        if getattr(hint, "__origin__", None) is Literal or not base_types & ({int} if kind == "int" else {float}):
            raise self.fail(f"{key}.type", f"{kind} does not fit {name} ({describe_type(hint)})",
                            "use type: categorical with allowed values" if getattr(hint, "__origin__", None)
                            is Literal or bool in base_types or str in base_types else
                            f"use type: {'int' if int in base_types else 'float'}")
        for k in ("low", "high"):
            if k not in m:
                raise self.fail(f"{key}.{k}", "missing", f"add `{k}:`")
        integer = kind == "int"
        low = self.number(m["low"], f"{key}.low", integer=integer)
        high = self.number(m["high"], f"{key}.high", integer=integer)
        log = self.boolean(m.get("log", False), f"{key}.log")
        step = m.get("step")
        if step is not None:
            step = self.number(step, f"{key}.step", integer=integer, low=0, strict_low=True)
        if low > high:
            raise self.fail(key, f"low {low} > high {high}", "swap them or fix the range")
        if low == high:
            raise self.fail(key, f"low == high == {low}", f"fix it under model: ({name}: {low}) instead")
        if log and low <= 0:
            raise self.fail(f"{key}.low", f"{low} must be > 0 with log: true", "use a positive low, or log: false")
        if log and step is not None and step != 1:
            raise self.fail(f"{key}.step", "cannot be combined with log: true", "remove step or set log: false")
        if step is not None:
            span = (high - low) / step
            if abs(span - round(span)) > 1e-9:
                top = low + math.floor(span + 1e-9) * step
                raise self.fail(f"{key}.high", f"{high} is not low + a multiple of step {step}",
                                f"use high: {top if integer else round(top, 12)}")
        return Param(name, kind, low=low if integer else float(low), high=high if integer else float(high),
                     step=step if (integer or step is None) else float(step), log=log, when=when)

    def when(self, v: Any, key: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        if not isinstance(v, Mapping) or not v:
            raise self.fail(key, f"{_fmt(v)} is not a mapping of conditions", "write when: {other_field: value}")
        out = []
        for k, val in v.items():
            values = tuple(val) if isinstance(val, list) else (val,)
            if not values:
                raise self.fail(f"{key}.{k}", "empty list of values", "list the values that enable this parameter")
            out.append((str(k), values))
        return tuple(out)

    def order(self, params: dict[str, Param]) -> list[Param]:
        """File order, except that a parameter comes after the parameters its conditions read; cycles fail."""
        done: dict[str, Param] = {}
        visiting: list[str] = []

        def visit(name: str) -> None:
            if name in done:
                return
            if name in visiting:
                cycle = " -> ".join(visiting[visiting.index(name):] + [name])
                raise self.fail(f"search_space.{name}.when", f"conditions form a cycle ({cycle})",
                                "make one of these parameters unconditional")
            visiting.append(name)
            for k, _ in params[name].when:
                if k in params:
                    visit(k)
            visiting.pop()
            done[name] = params[name]

        for name in params:
            visit(name)
        return list(done.values())

    def check_grid(self, space: SearchSpace) -> None:
        for p in space.params:
            if p.when:
                raise self.fail(f"search_space.{p.name}.when", "the grid sampler cannot use conditions",
                                "remove when:, or use sampler: tpe")
            if p.type == "float" and p.step is None:
                raise self.fail(f"search_space.{p.name}", "a float without step has no grid",
                                "add step:, or use sampler: tpe")

    def data(self, v: Any) -> tuple[Any, dict[str, Any]]:
        from model.data import DataError, DataSource  # noqa: WPS433 (lazy: model.data is a sibling module)
        import dataclasses

        if not isinstance(v, Mapping):
            raise self.fail("data", f"expected a mapping, got {_fmt(v)}", "write data: {source: stdlib}")
        source = self.choice(v.get("source", "stdlib"), "data.source", ("stdlib", "python", "files", "hf"))
        # YAML keys are DataSource's fields (path, max_bytes, val_fraction, hf_name, hf_split, ...), with
        # `source` for its `kind` (the name for it).
        allowed = ["source", *(f.name for f in dataclasses.fields(DataSource) if f.name != "kind")]
        m = self.mapping(v, "data", allowed)
        kwargs: dict[str, Any] = {"kind": source}
        raw: dict[str, Any] = {"source": source}
        for k, val in m.items():
            if k == "source":
                continue
            if k == "path" and val is not None:
                if not isinstance(val, str):
                    raise self.fail("data.path", f"{_fmt(val)} is not a path", "write path: some/dir")
                pth = Path(val).expanduser()
                val = str(pth if pth.is_absolute() else (self.base_dir / pth).resolve())
            kwargs[k] = val
            raw[k] = val
        try:
            ds = DataSource(**kwargs)
            if self.check_paths:
                ds.check()
        except DataError as exc:
            msg = " ".join(str(exc).split()).replace("data.kind", "data.source")
            if not msg.startswith("data"):
                msg = f"data: {msg}"
            raise SpecError(f"{self.where}: {msg}" + ("" if ";" in msg else "; fix the data section")) from None
        return ds, raw

    def budget(self, v: Any) -> Budget:
        m = self.mapping(v, "budget", ("train_tokens", "eval_tokens", "trial_timeout_s"))
        for k in ("train_tokens", "eval_tokens"):
            if k not in m:
                raise self.fail(f"budget.{k}", "missing", f"add `{k}:` (tokens)")
        return Budget(
            self.number(m["train_tokens"], "budget.train_tokens", integer=True, low=1),
            self.number(m["eval_tokens"], "budget.eval_tokens", integer=True, low=1),
            float(self.number(m.get("trial_timeout_s", 3600), "budget.trial_timeout_s", low=0, strict_low=True)),
        )

    def presets(self, v: Any, space: SearchSpace) -> tuple[str, ...]:
        if not isinstance(v, list):
            raise self.fail("enqueue_presets", f"{_fmt(v)} is not a list", "write e.g. enqueue_presets: [8gb]")
        out = []
        for i, name in enumerate(v):
            key = f"enqueue_presets[{i}]"
            name = str(name) if isinstance(name, (int, str)) and not isinstance(name, bool) else name
            if name not in PRESETS:
                raise self.fail(key, f"{_fmt(name)} is not a preset{_did_you_mean(name, PRESETS)}",
                                "use one of: " + ", ".join(PRESETS))
            if name in out:
                raise self.fail(key, f"{name} is listed twice", "list each preset once")
            cfg = preset_values(name, self._model)
            seen = dict(space.base)
            for p in space.params:
                if not _holds(p.when, seen):
                    continue
                value = cfg[p.name]
                if not p.contains(value):
                    raise self.fail(key, f"preset {name} has {p.name}: {_fmt(value)}, outside "
                                    f"search_space.{p.name} ({_describe_param(p)})",
                                    "widen that parameter's range or drop the preset")
                seen[p.name] = value
            out.append(name)
        return tuple(out)

    def pruning(self, v: Any) -> LearningCurvePruning:
        m = self.mapping(v, "pruning", ("learning_curve",))
        lc = self.mapping(m.get("learning_curve", {}) or {}, "pruning.learning_curve",
                          ("enabled", "min_fraction", "confidence"))
        d = LearningCurvePruning()
        return LearningCurvePruning(
            self.boolean(lc.get("enabled", d.enabled), "pruning.learning_curve.enabled"),
            float(self.number(lc.get("min_fraction", d.min_fraction), "pruning.learning_curve.min_fraction",
                              low=0, high=1, strict_low=True, strict_high=True)),
            float(self.number(lc.get("confidence", d.confidence), "pruning.learning_curve.confidence",
                              low=0, high=1, strict_low=True, strict_high=True)),
        )

    def estimate(self, v: Any) -> EstimateSettings:
        m = self.mapping(v, "estimate", ("enabled", "margin"))
        d = EstimateSettings()
        return EstimateSettings(self.boolean(m.get("enabled", d.enabled), "estimate.enabled"),
                                float(self.number(m.get("margin", d.margin), "estimate.margin", low=0, high=1)))

    # impossible combinations ------------------------------------------------------------------------
    def check_space(self, space: SearchSpace, model: dict[str, Any], ceiling: float) -> None:
        fixed = {**model, "target_vram_gb": ceiling}
        # 1) each value of each int/categorical parameter alone (interior rules such as powers of two)
        for p in space.params:
            for value in p.values(limit=4096):
                try:
                    Phase1Config.from_dict({**fixed, p.name: value})
                except ConfigError as exc:
                    if str(exc).split(":", 1)[0] == p.name:
                        raise SpecError(f"{self.where}: search_space.{p.name}: value {_fmt(value)} is invalid "
                                        f"({exc}); narrow the range or drop that choice") from None
        # 2) every corner combination (conditions applied), checked together
        corners = [(p, p.values(limit=2) if p.type != "categorical" else list(p.choices)) for p in space.params]
        total = math.prod(len(vals) for _, vals in corners) if corners else 1
        combos = itertools.product(*[vals for _, vals in corners])
        if total > _CORNER_LIMIT:
            import random

            rng = random.Random(0)
            combos = ([rng.choice(vals) for _, vals in corners] for _ in range(_CORNER_LIMIT))
        seen_sets: set[tuple] = set()
        for combo in combos:
            values: dict[str, Any] = {}
            chosen = dict(zip((p.name for p, _ in corners), combo))
            ctx = dict(space.base)
            for p in space.params:
                if _holds(p.when, ctx):
                    ctx[p.name] = values[p.name] = chosen[p.name]
            sig = tuple(sorted(values.items(), key=lambda kv: kv[0]))
            if sig in seen_sets:
                continue
            seen_sets.add(sig)
            try:
                cfg = Phase1Config.from_dict({**fixed, **values})
                trial_trainable(cfg)
            except ConfigError as exc:
                bad = str(exc).split(":", 1)[0]
                key = f"search_space.{bad}" if bad in space else "search_space"
                combo_txt = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items() if k in str(exc) or k == bad)
                raise SpecError(f"{self.where}: {key}: the combination {combo_txt or _fmt(values)} is invalid "
                                f"({exc}); narrow the ranges so that every combination is valid") from None


def preset_values(name: str, model: Mapping[str, Any]) -> dict[str, Any]:
    """A built-in preset's field values as a study with fixed `model` would run them: a `None` gate width
    (meaning d_model // 4) is resolved with the study's d_model, so it can be enqueued into an int parameter."""
    cfg = PRESETS[name].to_dict()
    if cfg["ar_ssm_gate_hidden_dim"] is None:
        cfg["ar_ssm_gate_hidden_dim"] = max(1, int(model.get("d_model", cfg["d_model"])) // 4)
    return cfg


def trial_trainable(cfg: Phase1Config) -> None:
    """Raise ConfigError when a trial could not train `cfg`. A trial trains an LNS config (lns_enabled: true) with LNS
    off, converts the trained model and evaluates the converted one (tuner.trial_runner), so LNS is allowed here;
    every other trainability rule of Phase1Config.check_trainable applies."""
    cfg.replace(lns_enabled=False).check_trainable()


def _describe_param(p: Param) -> str:
    if p.type == "categorical":
        return "choices " + _fmt(list(p.choices))
    step = f" step {p.step}" if p.step else ""
    return f"{p.low} .. {p.high}{step}{' log' if p.log else ''}"


def _param_dict(p: Param) -> dict[str, Any]:
    d: dict[str, Any] = {"type": p.type}
    if p.type == "categorical":
        d["choices"] = list(p.choices)
    else:
        d.update(low=p.low, high=p.high)
        if p.step is not None:
            d["step"] = p.step
        if p.log:
            d["log"] = True
    if p.when:
        d["when"] = {k: (list(v) if len(v) > 1 else v[0]) for k, v in p.when}
    return d
