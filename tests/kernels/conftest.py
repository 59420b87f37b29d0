"""Shared by the kernel tests: every tensor allocated with torch.empty / torch.empty_like during a test starts as
NaN (floating point), so a kernel that leaves an output element unwritten fails its comparison instead of passing
on whatever the allocator happened to hold."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    empty, empty_like = torch.empty, torch.empty_like

    def nan_fill(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: nan_fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: nan_fill(empty_like(*a, **k)))
