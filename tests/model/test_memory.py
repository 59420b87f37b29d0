"""model.memory.TensorMemoryTracker: peak live tensor bytes on CPU, checked against allocations of known size."""

from __future__ import annotations

import gc

import torch

from model.memory import GIB, TensorMemoryTracker

MB = 1_000_000  # a float32 [250_000] tensor


def test_counts_a_known_allocation_exactly():
    with TensorMemoryTracker() as mem:
        a = torch.empty(250_000)  # 1_000_000 bytes
        assert mem.live_bytes == MB
        b = a * 2  # a second 1 MB storage
        assert mem.live_bytes == 2 * MB
        del a
        assert mem.live_bytes == MB  # freed storage is subtracted at once
        c = torch.empty(500_000, dtype=torch.float64)  # 4 MB
        assert mem.live_bytes == 5 * MB
        del b, c
    assert mem.live_bytes == 0
    assert mem.peak_bytes == 5 * MB
    assert abs(mem.peak_gib - 5 * MB / GIB) < 1e-12


def test_views_and_inplace_ops_add_nothing():
    with TensorMemoryTracker() as mem:
        a = torch.zeros(1000, 250)  # 1 MB
        v = a[10:20].t()
        a.add_(1.0)
        v.mul_(2.0)
        r = a.view(250, 1000)
        assert mem.live_bytes == MB
        del a, v, r
    assert mem.peak_bytes == MB and mem.live_bytes == 0


def test_resize_is_remeasured():
    with TensorMemoryTracker() as mem:
        a = torch.empty(1000)  # 4000 bytes
        a.resize_(250_000)  # storage grows to 1 MB in place
        assert mem.live_bytes == MB
        del a
    assert mem.peak_bytes == MB


def test_backward_gradients_and_optimizer_state_are_counted():
    """A [512, 512] float32 weight (1 MiB): its gradient and two Adam moments are created inside the mode."""
    n = 512 * 512 * 4
    w = torch.nn.Parameter(torch.randn(512, 512))
    with TensorMemoryTracker() as mem:
        mem.track([w])
        assert mem.live_bytes == n
        x = torch.randn(8, 512)
        loss = (x @ w).square().sum()
        loss.backward()
        opt = torch.optim.AdamW([w], lr=1e-3)
        opt.step()
        del loss, x
        gc.collect()
        # weight + grad + exp_avg + exp_avg_sq, plus small scalars (step counters, x's leftovers freed)
        assert 4 * n <= mem.live_bytes < 4 * n + 64 * 1024, mem.live_bytes
    assert mem.peak_bytes >= 4 * n


def test_other_device_types_are_ignored():
    with TensorMemoryTracker(device_type="cuda") as mem:
        a = torch.empty(250_000)
        del a
    assert mem.peak_bytes == 0


def test_reset_peak():
    with TensorMemoryTracker() as mem:
        a = torch.empty(250_000)
        del a
        mem.reset_peak()
        assert mem.peak_bytes == 0
        b = torch.empty(1000)
        assert mem.peak_bytes == 4000
        del b
