"""VramGuard: fraction math, crossing logic driven by an injected sampler, stop latency, and real NVML when present."""

from __future__ import annotations

import os
import time

import pytest

from tuner.vram.guard import VramCeilingExceeded, VramGuard, allocator_fraction
from tuner.vram.nvml import nvml_available


@pytest.mark.parametrize("ceiling, total, want", [(8.0, 80.0, 0.1), (4.0, 16.0, 0.25), (100.0, 80.0, 1.0)])
def test_allocator_fraction(ceiling, total, want):
    assert allocator_fraction(ceiling, total) == pytest.approx(want)


@pytest.mark.parametrize("ceiling, total", [(0.0, 80.0), (-1.0, 80.0), (8.0, 0.0)])
def test_allocator_fraction_rejects_nonpositive(ceiling, total):
    with pytest.raises(ValueError):
        allocator_fraction(ceiling, total)


def test_interval_must_give_ten_samples_per_second():
    with pytest.raises(ValueError, match="interval_s"):
        VramGuard(1.0, sampler=lambda: 0.0, interval_s=0.2)


class _Ramp:
    """A sampler double: returns the values given, then repeats the last one. Counts calls."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = 0

    def __call__(self):
        v = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return v


def test_crossing_sets_flag_records_peak_and_check_raises():
    guard = VramGuard(1.0, sampler=_Ramp([0.2, 0.5, None, 1.3, 1.1]))
    for _ in range(2):
        guard.sample_once()
    guard.check()  # under the ceiling: no raise
    assert not guard.crossed and guard.peak_gib == pytest.approx(0.5)
    guard.sample_once()  # None: PID not listed -> counted as a sample, not as a reading
    assert guard.n_samples == 3 and guard.n_seen == 2
    guard.sample_once()
    assert guard.crossed and guard.crossed_peak_gib == pytest.approx(1.3) and guard.crossed_at is not None
    guard.sample_once()  # falling back under the ceiling does not clear the flag
    with pytest.raises(VramCeilingExceeded) as e:
        guard.check()
    assert e.value.peak_gib == pytest.approx(1.3) and e.value.ceiling_gib == 1.0
    assert guard.peak_gib == pytest.approx(1.3)


def test_exactly_at_ceiling_is_not_a_crossing():
    guard = VramGuard(1.0, sampler=_Ramp([1.0]))
    guard.sample_once()
    guard.check()
    assert not guard.crossed


def test_thread_samples_at_least_ten_per_second_and_stops_a_step_loop_within_one_second():
    """A 'training loop' calling check() every 20 ms stops < 1 s after the memory crosses."""
    level = {"gib": 0.1}
    crossed_events = []
    guard = VramGuard(
        2.0, sampler=lambda: level["gib"], interval_s=0.05, on_cross=lambda peak, t: crossed_events.append((peak, t))
    )
    with guard:
        t0 = time.monotonic()
        time.sleep(0.5)
        samples_half_second = guard.n_samples
        level["gib"] = 2.5
        t_cross = time.monotonic()
        stopped_at = None
        while time.monotonic() - t_cross < 3.0:
            try:
                guard.check()
            except VramCeilingExceeded as e:
                stopped_at = time.monotonic()
                assert e.peak_gib == pytest.approx(2.5)
                break
            time.sleep(0.02)
    assert samples_half_second >= 5, f"only {samples_half_second} samples in {t_cross - t0:.2f} s"
    assert stopped_at is not None and stopped_at - t_cross < 1.0
    assert len(crossed_events) == 1 and crossed_events[0][0] == pytest.approx(2.5)
    assert not guard._thread.is_alive()


def test_sampler_failure_is_reported_not_hidden():
    def broken():
        raise OSError("driver gone")

    with VramGuard(1.0, sampler=broken, interval_s=0.01) as guard:
        deadline = time.monotonic() + 1.0
        while guard.sampler_error is None and time.monotonic() < deadline:
            time.sleep(0.01)
    with pytest.raises(RuntimeError, match="driver gone"):
        guard.check()


@pytest.mark.skipif(not nvml_available(), reason="no NVIDIA GPU")
def test_real_nvml_sees_this_process():
    """On a GPU machine: allocate ~256 MiB with torch and see it through NVML by PID."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no NVIDIA GPU visible to torch")
    index = torch.cuda.current_device()
    with VramGuard(1000.0, device_index=index, pid=os.getpid(), interval_s=0.05) as guard:
        x = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
        torch.cuda.synchronize()
        time.sleep(0.5)
        del x
    assert guard.n_samples >= 5
    if guard.n_seen == 0:
        pytest.fail("NVML never listed this PID (container without the host PID namespace?)")
    assert guard.peak_gib >= 0.25
