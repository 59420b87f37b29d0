"""Typed readers of YAML values that fail with one line: `FILE: key.path: problem; fix` (SpecError)."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from model.config import (
    ConfigError,
    field_types,
)
from tuner.errors import SpecError


def did_you_mean(key: object, known: Iterable[object]) -> str:
    close = difflib.get_close_matches(str(key), sorted(map(str, known)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def yaml_problem(exc: yaml.YAMLError) -> str:
    """`line L, column C: invalid YAML (problem)` for a YAML parse error (where the parser knows the place)."""
    mark = getattr(exc, "problem_mark", None)
    at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    return f"{at}invalid YAML ({problem})"


def fmt_value(v: Any) -> str:
    return (
        yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
        if not isinstance(v, str)
        else repr(v)
    )


class Readers:
    """Where a study file is read from, and one-line failures naming its key."""

    def __init__(self, where: str, base_dir: Path, check_paths: bool):
        self.where, self.base_dir, self.check_paths = where, base_dir, check_paths
        self.types = field_types()

    def fail(self, key: str, problem: str, fix: str) -> SpecError:
        return SpecError(f"{self.where}: {key}: {problem}; {fix}" if key else f"{self.where}: {problem}; {fix}")

    # small typed readers -----------------------------------------------------------------------------
    def mapping(self, v: Any, key: str, allowed: Sequence[str]) -> dict[str, Any]:
        if not isinstance(v, Mapping):
            raise self.fail(key, f"expected a mapping, got {fmt_value(v)}", "write `key: value` pairs")
        for k in v:
            if k not in allowed:
                raise self.fail(
                    f"{key}.{k}" if key else str(k),
                    f"unknown key{did_you_mean(k, allowed)}",
                    "allowed keys: " + ", ".join(allowed),
                )
        return dict(v)

    def number(
        self,
        v: Any,
        key: str,
        *,
        integer: bool = False,
        low: float | None = None,
        high: float | None = None,
        strict_low: bool = False,
        strict_high: bool = False,
    ) -> Any:
        kind = "an integer" if integer else "a number"
        if isinstance(v, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", v.strip()):
            raise self.fail(
                key,
                f"{v!r} is a string, not a number (YAML 1.1 reads exponents without a dot as text)",
                f"write {float(v)!r} or put a dot in the mantissa (1.0e-4)",
            )
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or (isinstance(v, float) and not math.isfinite(v)):
            if integer and isinstance(v, float) and v.is_integer():
                raise self.fail(key, f"{v!r} is not an integer", f"write {int(v)}")
            raise self.fail(key, f"{fmt_value(v)} is not {kind}", f"write {kind}")
        if low is not None and (v <= low if strict_low else v < low):
            raise self.fail(key, f"{v!r} is out of range", f"use a value {'>' if strict_low else '>='} {low}")
        if high is not None and (v >= high if strict_high else v > high):
            raise self.fail(key, f"{v!r} is out of range", f"use a value {'<' if strict_high else '<='} {high}")
        return v

    def boolean(self, v: Any, key: str) -> bool:
        if not isinstance(v, bool):
            raise self.fail(key, f"{fmt_value(v)} is not true or false", "write true or false")
        return v

    def choice(self, v: Any, key: str, allowed: Sequence[str]) -> str:
        if v not in allowed or not isinstance(v, str):
            raise self.fail(
                key, f"{fmt_value(v)} is not allowed{did_you_mean(v, allowed)}", "use one of: " + ", ".join(allowed)
            )
        return v

    def config_error(self, exc: ConfigError, prefix: str, fix: str) -> SpecError:
        msg = str(exc)
        return SpecError(f"{self.where}: {prefix}{msg}; {fix}")
