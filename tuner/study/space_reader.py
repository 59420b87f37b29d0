"""Reading `search_space:`: parameters, conditions, their order, and the impossible-combination check."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, get_args

from model.config import (
    ConfigError,
    Phase1Config,
    describe_type,
    type_ok,
)
from tuner.errors import SpecError
from tuner.study.readers import Readers, did_you_mean, fmt_value
from tuner.study.space import Param, SearchSpace, holds
from tuner.study.spec import DERIVED_FIELDS, PARAM_KEYS, trial_trainable

_CORNER_LIMIT = 20_000  # corner combinations checked exhaustively; beyond it a seeded sample of this size

GRID_LIMIT = 100_000  # grid points in all; each is a trial, and Optuna's GridSampler lists them in memory


def grid_size(p: Param) -> int:
    """Points of one parameter on the grid (counted without listing them)."""
    if p.type == "categorical":
        return len(p.choices)
    if p.type == "int":
        return (int(p.top) - int(p.lo)) // p.int_step + 1
    return int(round((p.hi - p.lo) / float(p.step or 1.0))) + 1


_KINDS: dict[str, Literal["int", "float", "categorical"]] = {
    "int": "int",
    "float": "float",
    "categorical": "categorical",
}


class SpaceReader(Readers):
    """The search_space section (a mixin of the loader's readers)."""

    def space(self, v: Any, model: dict[str, Any]) -> SearchSpace:
        if not isinstance(v, Mapping):
            raise self.fail(
                "search_space",
                f"expected a mapping of parameters, got {fmt_value(v)}",
                "write `field: {type: int, low: .., high: ..}` entries",
            )
        params: dict[str, Param] = {}
        for name, body in v.items():
            key = f"search_space.{name}"
            if name not in self.types:
                raise self.fail(
                    key, f"not a Phase1Config field{did_you_mean(name, self.types)}", "use a field of model/config.py"
                )
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
                    raise self.fail(
                        key,
                        f"not a parameter or Phase1Config field{did_you_mean(k, self.types)}",
                        "name a search_space parameter or a model field",
                    )
                for a in allowed:
                    if not type_ok(a, self.types[k]):
                        raise self.fail(
                            key,
                            f"{fmt_value(a)} is not {describe_type(self.types[k])}",
                            f"compare with a value {k} can take",
                        )
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
                    raise self.fail(
                        f"search_space.{p.name}.when.{k}",
                        f"never holds ({src} is {fmt_value(reachable if len(reachable) > 1 else reachable[0])})",
                        f"remove the condition, or search/fix {k} so it can be {fmt_value(list(allowed))}",
                    )
        return space

    def param(self, name: str, body: Any, key: str) -> Param:
        m = self.mapping(body, key, PARAM_KEYS)
        hint = self.types[name]
        if "type" not in m:
            raise self.fail(f"{key}.type", "missing", "add `type: int`, `type: float` or `type: categorical`")
        kind = _KINDS[self.choice(m["type"], f"{key}.type", tuple(_KINDS))]
        when = self.when(m["when"], f"{key}.when") if "when" in m else ()
        if kind == "categorical":
            for k in ("low", "high", "step", "log"):
                if k in m:
                    raise self.fail(f"{key}.{k}", "not used by a categorical parameter", "list values under choices:")
            choices = m.get("choices")
            if not isinstance(choices, list) or not choices:
                raise self.fail(
                    f"{key}.choices", f"{fmt_value(choices)} is not a non-empty list", "write choices: [a, b, ...]"
                )
            for i, c in enumerate(choices):
                if not isinstance(c, (bool, int, float, str)) and c is not None:
                    raise self.fail(f"{key}.choices[{i}]", f"{fmt_value(c)} is not a scalar", "use plain values")
                if not type_ok(c, hint):
                    raise self.fail(
                        f"{key}.choices[{i}]",
                        f"{fmt_value(c)} is not {describe_type(hint)}",
                        f"use values of {name}'s type",
                    )
            if len({(type(c), c) for c in choices}) != len(choices):
                raise self.fail(f"{key}.choices", "contains a value twice", "list each choice once")
            return Param(name, "categorical", choices=tuple(choices), when=when)
        if "choices" in m:
            raise self.fail(f"{key}.choices", f"not used by a {kind} parameter", "use low/high, or type: categorical")
        base_types = {a for a in (get_args(hint) or (hint,)) if a is not type(None)}
        if getattr(hint, "__origin__", None) is Literal or not base_types & ({int} if kind == "int" else {float}):
            raise self.fail(
                f"{key}.type",
                f"{kind} does not fit {name} ({describe_type(hint)})",
                "use type: categorical with allowed values"
                if getattr(hint, "__origin__", None) is Literal or bool in base_types or str in base_types
                else f"use type: {'int' if int in base_types else 'float'}",
            )
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
                raise self.fail(
                    f"{key}.high",
                    f"{high} is not low + a multiple of step {step}",
                    f"use high: {top if integer else round(top, 12)}",
                )
        return Param(
            name,
            kind,
            low=low if integer else float(low),
            high=high if integer else float(high),
            step=step if (integer or step is None) else float(step),
            log=log,
            when=when,
        )

    def when(self, v: Any, key: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        if not isinstance(v, Mapping) or not v:
            raise self.fail(key, f"{fmt_value(v)} is not a mapping of conditions", "write when: {other_field: value}")
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
                cycle = " -> ".join(visiting[visiting.index(name) :] + [name])
                raise self.fail(
                    f"search_space.{name}.when",
                    f"conditions form a cycle ({cycle})",
                    "make one of these parameters unconditional",
                )
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
        total = 1
        for p in space.params:
            if p.when:
                raise self.fail(
                    f"search_space.{p.name}.when",
                    "the grid sampler cannot use conditions",
                    "remove when:, or use sampler: tpe",
                )
            if p.type == "float" and p.step is None:
                raise self.fail(
                    f"search_space.{p.name}", "a float without step has no grid", "add step:, or use sampler: tpe"
                )
            total *= grid_size(p)  # counted, never listed: a range over 0..3e8 must not be materialised here
            if total > GRID_LIMIT:
                raise self.fail(
                    f"search_space.{p.name}",
                    f"the grid has more than {GRID_LIMIT} points (up to here: {total:.3g})",
                    "coarsen the steps or narrow the ranges, or use sampler: tpe",
                )

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
                        raise SpecError(
                            f"{self.where}: search_space.{p.name}: value {fmt_value(value)} is invalid "
                            f"({exc}); narrow the range or drop that choice"
                        ) from None
        # 2) every corner combination (conditions applied), checked together
        corners = [(p, p.values(limit=2) if p.type != "categorical" else list(p.choices)) for p in space.params]
        total = math.prod(len(vals) for _, vals in corners) if corners else 1
        combos: Iterable[Sequence[Any]] = itertools.product(*[vals for _, vals in corners])
        if total > _CORNER_LIMIT:
            import random

            rng = random.Random(0)
            combos = ([rng.choice(vals) for _, vals in corners] for _ in range(_CORNER_LIMIT))
        seen_sets: set[tuple[tuple[str, Any], ...]] = set()
        for combo in combos:
            values: dict[str, Any] = {}
            chosen = dict(zip((p.name for p, _ in corners), combo))
            ctx = dict(space.base)
            for p in space.params:
                if holds(p.when, ctx):
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
                combo_txt = ", ".join(f"{k}={fmt_value(v)}" for k, v in values.items() if k in str(exc) or k == bad)
                raise SpecError(
                    f"{self.where}: {key}: the combination {combo_txt or fmt_value(values)} is invalid "
                    f"({exc}); narrow the ranges so that every combination is valid"
                ) from None
