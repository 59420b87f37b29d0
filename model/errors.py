"""Errors the model raises while training; the tuner maps each to a trial's end reason."""

from __future__ import annotations

from typing import Any


class NumericalInstabilityError(RuntimeError):
    """A stability check crossed its bound, or the loss or a parameter went non-finite.

    `diagnostics` holds the measurements that tripped it (check name, value, bound, step), so the
    tuner can save them on the trial.
    """

    def __init__(self, message: str, diagnostics: dict[str, Any] | None = None):
        super().__init__(message)
        self.diagnostics = dict(diagnostics or {})
