"""tuner.vram.calibration: JSON store keyed by (device, driver, torch), refine() from finished trials, and how
tuner.vram.estimate uses (or, without one, labels the lack of) a calibration."""

from __future__ import annotations

import json

import pytest

from model.config import PRESETS
from tests.tuner.tiny import calibration
from tuner.vram import calibration as cal
from tuner.vram.estimate.predict import estimate
from tuner.vram.nvml import current_device_key


def test_store_round_trip(tmp_path):
    path = tmp_path / "c.json"
    a = calibration()
    b = calibration(device="NVIDIA H200", outside_gib=0.8)
    cal.save_calibration(a, path)
    cal.save_calibration(b, path)
    assert cal.load_calibration(path, a.key) == a
    assert cal.load_calibration(path) == b  # most recent entry
    assert set(cal.load_all(path)) == {a.key, b.key}
    data = json.loads(path.read_text())
    assert data["entries"][a.key]["outside_gib"] == pytest.approx(0.74)
    assert cal.load_calibration(tmp_path / "missing.json") is None


def test_unreadable_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(cal.CalibrationError, match="unreadable calibration file"):
        cal.load_calibration(path)


def test_refine_learns_tensor_scale_and_outside_from_trials(tmp_path):
    path = tmp_path / "c.json"
    c = calibration()
    cal.save_calibration(c, path)
    cfg = PRESETS["8gb"]
    pred = estimate(cfg, calibration=c)
    assert pred.calibrated and pred.outside_gib == pytest.approx(0.74)
    # Trials that used 3 % more tensor memory than predicted, whose allocator behaved as modelled, and with
    # 0.80 GiB outside the allocator (NVML - reserved).
    for b in (2, 4, 8):
        p = estimate(cfg, batch_size=b, calibration=c)
        torch_peak = p.tensor_raw_gib * 1.03 + c.workspace_gib
        reserved = torch_peak + p.allocator_for(torch_peak)
        c2 = cal.refine_stored(path, c.key, p, reserved + 0.80, torch_peak, reserved)
    assert c2.n_refined == 3
    assert c2.tensor_scale == pytest.approx(1.03, rel=1e-6)
    assert c2.outside_effective_gib == pytest.approx(0.80, rel=1e-6)
    assert c2.kappa_offset("amp") == pytest.approx(0.0, abs=0.01)  # the allocator behaved as replayed
    assert c2.kappa_offset("fp32") is None  # no fp32 trial yet: the replay's value is used as it is
    refined = estimate(cfg, calibration=cal.load_calibration(path, c.key))
    assert refined.tensor_gib == pytest.approx(pred.tensor_raw_gib * 1.03 + c.workspace_gib, rel=1e-9)
    assert refined.outside_gib == pytest.approx(0.80)
    assert refined.kappa_source.startswith("replay") and "3 amp samples" in refined.kappa_source
    # A robust running estimate: one wild trial does not move the medians; the window is bounded.
    p = estimate(cfg, calibration=c2)
    c3 = cal.refine(c2, p, 50.0, 40.0)
    assert c3.tensor_scale == pytest.approx(c2.tensor_scale, rel=0.02)
    for _ in range(cal.WINDOW + 5):
        c3 = cal.refine(c3, p, 5.0, 4.0)
    assert c3.n_refined == cal.WINDOW


def test_refine_targets_the_allocator_gap_per_dtype_class():
    """A device whose CE hole is 0.1 F bigger than the replay's: after two bf16 trials the bf16 prediction matches
    the measured NVML peak; fp32 predictions keep the replay's kappa; without the reserved peak the residual over
    the calibrated outside part is read as the allocator gap and the outside part is left alone."""
    c = calibration()
    cfg = PRESETS["8gb"]
    for use_reserved in (True, False):
        k = c
        for b in (2, 4):
            p = estimate(cfg, batch_size=b, calibration=k)
            torch_peak = p.tensor_gib
            reserved = torch_peak + p.allocator_for(torch_peak, kappa=p.ce_replay_kappa + 0.1)
            nvml = reserved + c.outside_gib
            k = cal.refine(k, p, nvml, torch_peak, reserved if use_reserved else None)
        assert k.kappa_offset("amp") == pytest.approx(0.1, abs=0.01)
        assert k.outside_residuals_gib == (pytest.approx((c.outside_gib,) * 2) if use_reserved else ())
        e = estimate(cfg, batch_size=6, calibration=k)
        truth = e.tensor_gib + e.allocator_for(e.tensor_gib, kappa=e.ce_replay_kappa + 0.1) + c.outside_gib
        assert e.total_gib == pytest.approx(truth, rel=2e-3)
        assert e.total_gib > estimate(cfg, batch_size=6, calibration=c).total_gib  # bigger hole than the replay's
        f = estimate(cfg.replace(dtype="float32"), batch_size=6, calibration=k)
        assert f.kappa_source == "replay" and f.ce_hole_kappa == f.ce_replay_kappa


@pytest.mark.parametrize(
    "nvml,torch_peak,reserved", [(0.0, 1.0, None), (float("nan"), 1.0, None), (5.0, -1.0, None), (5.0, 4.0, 0.0)]
)
def test_refine_rejects_non_measurements(nvml, torch_peak, reserved):
    p = estimate(PRESETS["8gb"], calibration=calibration())
    with pytest.raises(cal.CalibrationError):
        cal.refine(calibration(), p, nvml, torch_peak, reserved)


def _estimate_from_file(config, path):
    """What the objective does: the caller chooses the calibration, estimate() stays pure."""
    choice = cal.choose_calibration(path, current_device_key())
    return estimate(config, choice.calibration, calibrated=choice.calibrated, calibration_source=choice.source)


def test_estimate_without_calibration_says_so(tmp_path):
    e = _estimate_from_file(PRESETS["8gb"], tmp_path / "none.json")
    assert e.calibrated is False and e.outside_gib == 0.0
    assert "NOT calibrated" in e.outside_source
    # A stored calibration of another machine is used, labelled as borrowed, still calibrated=False here
    # (this test machine has no GPU whose key could match).
    path = tmp_path / "c.json"
    cal.save_calibration(calibration(device="Some Other GPU"), path)
    e2 = _estimate_from_file(PRESETS["8gb"], path)
    if current_device_key() is None:
        assert e2.calibrated is False
        assert "borrowed" in e2.outside_source and "Some Other GPU" in e2.outside_source
        assert e2.outside_gib == pytest.approx(0.74)
        assert e2.total_gib > e.total_gib
