"""tuner.trial.faults: the test-only fault hook. Which fault applies to which trial, and that each kind raises what
the real failure raises (so the trial child treats an injected failure exactly like a real one)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from model.errors import NumericalInstabilityError
from tuner.trial.faults import FaultInjection, InjectedFault, fault_for, raise_fault

STEP = SimpleNamespace(step=7)


def test_fault_for_picks_the_first_that_applies():
    only_3 = FaultInjection("error", trials=(3,))
    every = FaultInjection("slow")
    assert fault_for(None, 3) is None
    assert fault_for(only_3, 3) is only_3 and fault_for(only_3, 4) is None
    assert fault_for([only_3, every], 3) is only_3
    assert fault_for([only_3, every], 4) is every
    assert fault_for((only_3,), None) is None  # a trial without a number matches only trials=None


@pytest.mark.parametrize(
    "kind, exc, text",
    [
        ("oom", torch.cuda.OutOfMemoryError, "injected CUDA out of memory at step 7"),
        ("error", InjectedFault, "injected failure at step 7"),
        ("nonfinite", NumericalInstabilityError, "injected non-finite loss at step 7"),
    ],
)
def test_each_kind_raises_what_the_real_failure_raises(kind, exc, text):
    with pytest.raises(exc, match=text) as info:
        raise_fault(FaultInjection(kind), STEP)
    if kind == "nonfinite":
        assert info.value.diagnostics["check"] == "finite_loss" and info.value.diagnostics["step"] == 7


def test_slow_sleeps_and_raises_nothing():
    t0 = time.monotonic()
    raise_fault(FaultInjection("slow", sleep_s=0.05), STEP)
    assert time.monotonic() - t0 >= 0.05


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="'segv' is not one of oom, error, nonfinite, slow"):
        raise_fault(FaultInjection("segv"), STEP)
