"""Test-only fault injection the trial child honours (a double of a failure, never of the service)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any


class InjectedFault(RuntimeError):
    """A failure raised on purpose by the test-only fault hook (a double of the failure, not of the service)."""


@dataclasses.dataclass(frozen=True)
class FaultInjection:
    """Test-only hook the child honours: at optimizer step `at_step` of the trials numbered in `trials` (None: all),
    raise the failure `kind` inside the training step:
      "oom": torch.cuda.OutOfMemoryError (what a real CUDA OOM raises), "error": InjectedFault,
      "nonfinite": model.errors.NumericalInstabilityError, "slow": sleep `sleep_s` in every step from `at_step` on
      (makes a trial long enough to be interrupted; raises nothing), "ceiling": from `at_step` on, report a VRAM
      ceiling crossing to the parent once (the message the CUDA guard's callback sends) and keep training, sleeping
      `sleep_s` a step: a child that does not stop, which the parent must kill in time (CPU has no guard).
    Never set by a study file; only tests and `run_worker(fault=...)` pass it (one, or a list: the first that
    applies to a trial is used)."""

    kind: str
    at_step: int = 1
    trials: tuple[int, ...] | None = None
    sleep_s: float = 0.5

    def applies(self, trial_number: int | None) -> bool:
        return self.trials is None or trial_number in self.trials


# =====================================================================================================================


def fault_for(
    fault: FaultInjection | Sequence[FaultInjection] | None, trial_number: int | None
) -> FaultInjection | None:
    """The first FaultInjection (one, or a list of them) that applies to this trial."""
    if fault is None:
        return None
    for f in fault if isinstance(fault, Sequence) else [fault]:
        if f.applies(trial_number):
            return f
    return None


def raise_fault(fault: FaultInjection, info: Any) -> None:
    if fault.kind == "oom":
        import torch

        raise torch.cuda.OutOfMemoryError(f"injected CUDA out of memory at step {info.step} (test fault hook)")
    if fault.kind == "error":
        raise InjectedFault(f"injected failure at step {info.step} (test fault hook)")
    if fault.kind == "nonfinite":
        from model.errors import NumericalInstabilityError

        raise NumericalInstabilityError(
            f"injected non-finite loss at step {info.step} (test fault hook)",
            {"check": "finite_loss", "value": float("nan"), "step": info.step},
        )
    if fault.kind in ("slow", "ceiling"):  # the child sends the ceiling message itself (tuner.trial.child)
        time.sleep(fault.sleep_s)
        return
    raise ValueError(f"FaultInjection.kind: {fault.kind!r} is not one of oom, error, nonfinite, slow, ceiling")
