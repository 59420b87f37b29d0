"""The search space: parameters, their conditions (`when`), sampling through a trial, the grid."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tuner.study.readers import fmt_value


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

    @property
    def lo(self) -> float:
        """`low` of a numeric parameter (the loader sets it for every int/float parameter)."""
        if self.low is None:
            raise ValueError(f"{self.name}: a {self.type} parameter has no range")
        return self.low

    @property
    def hi(self) -> float:
        """`high` of a numeric parameter."""
        if self.high is None:
            raise ValueError(f"{self.name}: a {self.type} parameter has no range")
        return self.high

    @property
    def int_step(self) -> int:
        return int(self.step or 1)

    def distribution(self) -> Any:
        """The Optuna distribution (optuna imported lazily: spec loading does not need it)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.type == "int":
            return IntDistribution(int(self.lo), int(self.hi), log=self.log, step=self.int_step)
        if self.type == "float":
            return FloatDistribution(float(self.lo), float(self.hi), log=self.log, step=self.step)
        return CategoricalDistribution(list(self.choices))

    @property
    def top(self) -> Any:
        """Highest value this parameter can take (int: the last step below `high`)."""
        if self.type == "int":
            step = self.int_step
            return int(self.lo) + (int(self.hi) - int(self.lo)) // step * step
        return self.high

    def values(self, limit: int | None = None) -> list[Any]:
        """Every value (int/categorical) or the two ends (float); ints with > limit values give their ends."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "float":
            return [self.low, self.high]
        step = self.int_step
        n = (self.top - int(self.lo)) // step + 1
        if limit is not None and n > limit:
            return [int(self.lo), self.top]
        return list(range(int(self.lo), self.top + 1, step))

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not (self.lo <= value <= self.hi):
            return False
        if self.type == "int":
            return isinstance(value, int) and (value - int(self.lo)) % self.int_step == 0
        if self.step is not None:
            k = (value - self.lo) / self.step
            return abs(k - round(k)) < 1e-9
        return True


def holds(when: tuple[tuple[str, tuple[Any, ...]], ...], values: Mapping[str, Any]) -> bool:
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
        return [p for p in self.params if holds(p.when, seen)]

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Sample every active parameter through `trial.suggest_*`; returns {field: value} (inactive ones absent)."""
        seen: dict[str, Any] = dict(self.base)
        out: dict[str, Any] = {}
        for p in self.params:
            if not holds(p.when, seen):
                continue
            if p.type == "int":
                value: Any = trial.suggest_int(p.name, int(p.lo), int(p.hi), step=p.int_step, log=p.log)
            elif p.type == "float":
                value = trial.suggest_float(p.name, float(p.lo), float(p.hi), step=p.step, log=p.log)
            else:
                value = trial.suggest_categorical(p.name, list(p.choices))
            seen[p.name] = out[p.name] = value
        return out

    def grid(self) -> dict[str, list[Any]]:
        """Every value of every parameter, for GridSampler (only valid for a space without floats or `when`)."""
        out: dict[str, list[Any]] = {}
        for p in self.params:
            if p.type == "float":
                step = float(p.step or 0.0)  # the loader refuses a grid float without step
                n = int(round((p.hi - p.lo) / step))
                out[p.name] = [p.lo + i * step for i in range(n + 1)]
            else:
                out[p.name] = p.values()
        return out


def describe_param(p: Param) -> str:
    if p.type == "categorical":
        return "choices " + fmt_value(list(p.choices))
    step = f" step {p.step}" if p.step else ""
    return f"{p.low} .. {p.high}{step}{' log' if p.log else ''}"


def param_dict(p: Param) -> dict[str, Any]:
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
