"""Study files: safe YAML -> a frozen, fully validated `StudySpec`, before anything touches storage or a GPU.

Every problem is one line, `FILE: key.path: problem; fix` (SpecError). The format, its defaults and how impossible
combinations are decided: docs/study-file.md.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from model.config import (
    PRESETS,
    ConfigError,
    Phase1Config,
)
from model.dense_config import DenseConfig, dense_for
from tuner.errors import SpecError
from tuner.study.readers import did_you_mean, fmt_value
from tuner.study.sizes import check_sizes
from tuner.study.space import SearchSpace, describe_param, holds, param_dict
from tuner.study.space_reader import SpaceReader
from tuner.study.spec import (
    DERIVED_FIELDS,
    DIRECTIONS,
    MAXIMIZED_METRICS,
    METRICS,
    MIN_CURVE_TOKENS,
    SAMPLER_OPTIONS,
    SAMPLERS,
    STEP_MODES,
    TOP_KEYS,
    Budget,
    EstimateSettings,
    LearningCurvePruning,
    ObjectiveSpec,
    SamplerSpec,
    StepMode,
    StudySpec,
    TrainingSettings,
    baseline_shape,
    preset_values,
    trial_trainable,
)
from tuner.study.yaml_input import YamlInputError, read_yaml

MAX_NAME_CHARS = 512  # Optuna's study_name column (VARCHAR(512)): Postgres refuses longer names at insert time
MAX_SEED = 2**32 - 1  # samplers seed numpy's RandomState, which takes 0 .. 2^32 - 1

# --- loading -------------------------------------------------------------------------------------------------


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file (tuner.study.yaml_input: safe, bounded, unique keys).
    Raises SpecError `FILE: key: problem; fix`."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: file not found; pass the path of a study YAML such as studies/quickstart.yaml")
    try:
        data = read_yaml(p)  # bounded: size, nesting, aliases, integers; duplicate keys refused
    except YamlInputError as exc:
        raise SpecError(f"{p}: {exc}") from None
    return spec_from_dict(data, where=str(p), base_dir=p.resolve().parent, path=str(p))


def spec_from_dict(
    data: Any,
    where: str = "<spec>",
    *,
    base_dir: str | Path | None = None,
    check_paths: bool = True,
    path: str | None = None,
) -> StudySpec:
    """Validate a mapping into a StudySpec. `base_dir` resolves a relative data path (default: cwd);
    `check_paths=False` skips the data-path existence check (a stored spec read on a machine without the data)."""
    return _Loader(where, Path(base_dir) if base_dir else Path.cwd(), check_paths).load(data, path)


class _Loader(SpaceReader):
    """Reads every section of a study file into a StudySpec."""

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
            raise self.fail(
                "name",
                f"{fmt_value(name)} is not a study name",
                "use letters, digits, '_', '.' or '-', starting with a letter or digit",
            )
        if len(name) > MAX_NAME_CHARS:
            raise self.fail(
                "name",
                f"{len(name)} characters; the storage keeps at most {MAX_NAME_CHARS}",
                "use a shorter name",
            )
        objectives = self.objectives(top.get("objectives"))
        ceiling = float(self.number(top["vram_ceiling_gib"], "vram_ceiling_gib", low=0, strict_low=True))
        sampler = self.sampler(top.get("sampler", {"name": "tpe"}))
        n_trials = self.number(top.get("n_trials", 20), "n_trials", integer=True, low=1)
        model = self.model(top.get("model", {}) or {}, ceiling)
        space = self.space(top.get("search_space", {}) or {}, model)
        if sampler.name == "grid":
            self.check_grid(space)
        data_source, data_raw = self.data(top.get("data", {"source": "stdlib"}))
        budget = self.budget(top["budget"])
        presets = self.presets(top.get("enqueue_presets", []) or [], space, model)
        pruning = self.pruning(top.get("pruning", {}) or {})
        if pruning.enabled and budget.train_tokens < MIN_CURVE_TOKENS:
            raise self.fail(
                "pruning.learning_curve.enabled",
                f"true with budget.train_tokens = "
                f"{budget.train_tokens}; the learning curve needs log-spaced evaluations from 1/16 of "
                "the budget",
                f"raise train_tokens to >= {MIN_CURVE_TOKENS} or set enabled: false",
            )
        estimate = self.estimate(top.get("estimate", {}) or {})
        baseline, baseline_raw = self.baseline(top.get("baseline"), model, ceiling)
        training = self.training(top.get("training", {}) or {})
        self.check_space(space, model, ceiling)
        raw = {
            "name": name,
            "objectives": [{"metric": o.metric, "direction": o.direction} for o in objectives],
            "vram_ceiling_gib": ceiling,
            "sampler": {"name": sampler.name, "seed": sampler.seed, **sampler.kwargs},
            "n_trials": n_trials,
            "model": dict(model),
            "search_space": {p.name: param_dict(p) for p in space.params},
            "data": data_raw,
            "budget": {
                "train_tokens": budget.train_tokens,
                "eval_tokens": budget.eval_tokens,
                "trial_timeout_s": budget.trial_timeout_s,
            },
            "enqueue_presets": list(presets),
            "pruning": {
                "learning_curve": {
                    "enabled": pruning.enabled,
                    "min_fraction": pruning.min_fraction,
                    "confidence": pruning.confidence,
                }
            },
            "estimate": {"enabled": estimate.enabled, "margin": estimate.margin},
        }
        if baseline_raw is not None:  # absent stays absent: a stored spec from before the key compares equal
            raw["baseline"] = baseline_raw
        if training != TrainingSettings():  # the same: a stored spec from before the key compares equal
            raw["training"] = {"step": training.step.value}
        spec = StudySpec(
            name=name,
            objectives=objectives,
            vram_ceiling_gib=ceiling,
            sampler=sampler,
            n_trials=n_trials,
            model=model,
            space=space,
            data=data_source,
            budget=budget,
            enqueue_presets=presets,
            pruning=pruning,
            estimate=estimate,
            baseline=baseline,
            training=training,
            path=path,
            raw=raw,
        )
        return spec

    def objectives(self, v: Any) -> tuple[ObjectiveSpec, ...]:
        if v is None:
            return (ObjectiveSpec("val_ppl", "minimize"), ObjectiveSpec("peak_vram_gib", "minimize"))
        if not isinstance(v, list) or not v:
            raise self.fail(
                "objectives",
                f"{fmt_value(v)} is not a non-empty list",
                "write e.g. [{metric: val_ppl, direction: minimize}]",
            )
        out, seen = [], set()
        for i, item in enumerate(v):
            key = f"objectives[{i}]"
            m = self.mapping(item, key, ("metric", "direction"))
            if "metric" not in m:
                raise self.fail(f"{key}.metric", "missing", "add `metric:` (" + ", ".join(METRICS) + ")")
            metric = self.choice(m["metric"], f"{key}.metric", METRICS)
            default = "maximize" if metric in MAXIMIZED_METRICS else "minimize"  # the natural sense of each metric
            direction = self.choice(m.get("direction", default), f"{key}.direction", DIRECTIONS)
            if metric in seen:
                raise self.fail(f"{key}.metric", f"{metric} is listed twice", "list each metric once")
            seen.add(metric)
            out.append(ObjectiveSpec(metric, direction))
        return tuple(out)

    def sampler(self, v: Any) -> SamplerSpec:
        if isinstance(v, str):
            v = {"name": v}
        m = self.mapping(v, "sampler", ("name", "seed", *sorted({k for o in SAMPLER_OPTIONS.values() for k in o})))
        name = self.choice(m.get("name", "tpe"), "sampler.name", SAMPLERS)
        seed = m.get("seed")
        if seed is not None:
            seed = self.number(seed, "sampler.seed", integer=True, low=0, high=MAX_SEED)  # numpy seeds are 32-bit
        opts: dict[str, Any] = {}
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

    def model(self, v: Any, ceiling: float) -> dict[str, Any]:
        m = self.mapping(v, "model", tuple(self.types))
        for k in m:
            if k in DERIVED_FIELDS:
                raise self.fail(f"model.{k}", f"is set from {DERIVED_FIELDS[k]}", "remove it from model:")
        try:
            cfg = Phase1Config.from_dict({**m, "target_vram_gb": ceiling}, where="model")
            check_sizes(cfg)
        except ConfigError as exc:
            raise self.config_error(
                exc, "model." if not str(exc).startswith("model") else "", "fix the value under model:"
            ) from None
        try:
            trial_trainable(cfg)
        except ConfigError as exc:
            raise self.config_error(exc, "model.", "studies train their trials") from None
        return {k: getattr(cfg, k) for k in m}  # ints given for float fields come back as floats

    def data(self, v: Any) -> tuple[Any, dict[str, Any]]:
        from model.corpus import DataError, DataSource  # lazy; model.corpus defines them (model.data re-exports)

        if not isinstance(v, Mapping):
            raise self.fail("data", f"expected a mapping, got {fmt_value(v)}", "write data: {source: stdlib}")
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
                    raise self.fail("data.path", f"{fmt_value(val)} is not a path", "write path: some/dir")
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

    def presets(self, v: Any, space: SearchSpace, model: dict[str, Any]) -> tuple[str, ...]:
        if not isinstance(v, list):
            raise self.fail("enqueue_presets", f"{fmt_value(v)} is not a list", "write e.g. enqueue_presets: [8gb]")
        out = []
        for i, name in enumerate(v):
            key = f"enqueue_presets[{i}]"
            name = str(name) if isinstance(name, (int, str)) and not isinstance(name, bool) else name
            if not isinstance(name, str):  # a list or mapping cannot be looked up (unhashable)
                raise self.fail(key, f"{fmt_value(name)} is not a preset name", "write e.g. enqueue_presets: [8gb]")
            if name not in PRESETS:
                raise self.fail(
                    key,
                    f"{fmt_value(name)} is not a preset{did_you_mean(name, PRESETS)}",
                    "use one of: " + ", ".join(PRESETS),
                )
            if name in out:
                raise self.fail(key, f"{name} is listed twice", "list each preset once")
            cfg = preset_values(name, model)
            seen = dict(space.base)
            for p in space.params:
                if not holds(p.when, seen):
                    continue
                value = cfg[p.name]
                if not p.contains(value):
                    raise self.fail(
                        key,
                        f"preset {name} has {p.name}: {fmt_value(value)}, outside "
                        f"search_space.{p.name} ({describe_param(p)})",
                        "widen that parameter's range or drop the preset",
                    )
                seen[p.name] = value
            out.append(name)
        return tuple(out)

    def pruning(self, v: Any) -> LearningCurvePruning:
        m = self.mapping(v, "pruning", ("learning_curve",))
        lc = self.mapping(
            m.get("learning_curve", {}) or {}, "pruning.learning_curve", ("enabled", "min_fraction", "confidence")
        )
        d = LearningCurvePruning()

        def fraction(key: str) -> float:  # strictly between 0 and 1
            value = self.number(lc.get(key, getattr(d, key)), f"pruning.learning_curve.{key}", low=0, high=1,
                                strict_low=True, strict_high=True)  # fmt: skip
            return float(value)

        return LearningCurvePruning(
            self.boolean(lc.get("enabled", d.enabled), "pruning.learning_curve.enabled"),
            fraction("min_fraction"),
            fraction("confidence"),
        )

    def baseline(self, v: Any, model: dict[str, Any], ceiling: float) -> tuple[DenseConfig | None, Any]:
        """`baseline: dense` or a mapping of DenseConfig overrides (`{kind: dense, n_heads: 8}`) -> the reference
        trial's DenseConfig, built by dense_for from the study's fixed model (absent fields: Phase1Config's
        defaults, except the learning rate, which is DenseConfig's own unless the study fixes or overrides it)."""
        if v is None:
            return None, None
        fix = "write `baseline: dense` or a mapping like {kind: dense, n_heads: 8}"
        if isinstance(v, str):
            if v != "dense":
                raise self.fail("baseline", f"{fmt_value(v)} is not a baseline{did_you_mean(v, ['dense'])}", fix)
            overrides: dict[str, Any] = {}
        elif isinstance(v, Mapping):
            overrides = dict(v)
            kind = overrides.pop("kind", "dense")
            if kind != "dense":
                raise self.fail("baseline.kind", f"{fmt_value(kind)} is not a baseline kind", "use kind: dense")
            known = {f.name for f in dataclasses.fields(DenseConfig)} - {"kind"}
            for key in overrides:
                if key not in known:
                    raise self.fail(
                        f"baseline.{key}",
                        f"not a DenseConfig field{did_you_mean(key, known)}",
                        "allowed: " + ", ".join(sorted(known)),
                    )
        else:
            raise self.fail("baseline", f"{fmt_value(v)} is neither `dense` nor a mapping", fix)
        try:
            config = dense_for(baseline_shape(model, ceiling), **overrides)
        except (ConfigError, TypeError) as exc:
            raise SpecError(
                f"{self.where}: baseline.{' '.join(str(exc).split())}; fix the value under baseline:"
            ) from None
        return config, ("dense" if isinstance(v, str) else {"kind": "dense", **overrides})

    def estimate(self, v: Any) -> EstimateSettings:
        m = self.mapping(v, "estimate", ("enabled", "margin"))
        d = EstimateSettings()
        return EstimateSettings(
            self.boolean(m.get("enabled", d.enabled), "estimate.enabled"),
            float(self.number(m.get("margin", d.margin), "estimate.margin", low=0, high=1)),
        )

    def training(self, v: Any) -> TrainingSettings:
        """`training: {step: eager | compile | compile_graphs}`. Whether the step can run on the worker's device is
        decided by the worker (tuner.trial.worker), which knows the device; the file does not."""
        m = self.mapping(v, "training", ("step",))
        step = m.get("step", TrainingSettings().step.value)
        if not isinstance(step, str) or step not in STEP_MODES:
            hint = did_you_mean(step, STEP_MODES) if isinstance(step, str) else ""
            raise self.fail(
                "training.step", f"{fmt_value(step)} is not a step{hint}", "use one of: " + ", ".join(STEP_MODES)
            )
        return TrainingSettings(StepMode(step))
