"""tuner.vram.estimate.predict: the estimate is fast, torch-free arithmetic; its parts add up (tensor bytes +
allocator + outside the allocator), it counts the model's parameters, and it moves the right way with batch size,
dtype and the fused scan. The tensor timeline against a real training peak: test_tensors.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from model.config import PRESETS, Phase1Config
from tests.tuner.tiny import calibration
from tests.tuner.vram.estimate.tiny import TINY
from tuner.vram.calibration import default_path, save_calibration
from tuner.vram.estimate.predict import estimate


def test_prediction_is_fast_and_imports_no_torch():
    code = textwrap.dedent("""
        import sys, time
        t = time.perf_counter()
        from model.config import PRESETS
        from tuner.vram.estimate.predict import estimate
        for name in ("8gb", "10gb", "24gb"):
            for b in (1, 4, 8, 16):
                e = estimate(PRESETS[name], batch_size=b)
        print(time.perf_counter() - t, "torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert float(out[0]) < 2.0
    assert out[1] == "False"


def test_param_count_is_the_models():
    """The estimator counts with model.shapes (tests/model/test_shapes.py checks those against the modules); here the
    estimate's total against the built model, and the presets' against their formula."""
    from model.lm import build_model, expected_param_counts

    for cfg in (
        PRESETS["8gb"],
        PRESETS["24gb"],
        Phase1Config(htt_num_cores=3, head="low_rank", d_model=96),
        Phase1Config(ar_ssm_min_rank=32, ar_ssm_max_rank=32, htt_phase_encoding=False),
    ):
        assert estimate(cfg).params == expected_param_counts(cfg)["total"]
    small = Phase1Config(**{**TINY, "htt_num_cores": 3, "head": "low_rank", "head_rank": 8})
    for cfg in (Phase1Config(**TINY), small):
        assert estimate(cfg).params == sum(p.numel() for p in build_model(cfg).parameters())


def test_breakdown_is_consistent_and_scales_with_batch():
    e = estimate(PRESETS["24gb"], calibration=None)
    assert e.tensor_gib == pytest.approx(sum(e.components.values()), rel=1e-9)
    assert e.total_gib == pytest.approx(e.tensor_gib + e.allocator_gib + e.outside_gib)
    assert e.allocator_gib > 0  # at least the small pool's page
    big = estimate(PRESETS["24gb"], batch_size=16)
    assert big.tensor_gib > 1.8 * e.tensor_gib - 0.5  # activations dominate: nearly linear in B
    d = e.to_dict()
    for key in (
        "total_gib",
        "tensor_gib",
        "allocator_gib",
        "outside_gib",
        "components",
        "calibrated",
        "peak_moment",
        "moments",
    ):
        assert key in d
    json.dumps(d)


def test_bf16_needs_less_than_fp32_and_fused_scan_less_than_torch_scan():
    base = PRESETS["24gb"]
    assert estimate(base).tensor_gib < estimate(base.replace(dtype="float32")).tensor_gib
    assert estimate(base).tensor_gib < estimate(base.replace(ar_ssm_use_fused_scan=False)).tensor_gib


def test_allocator_part_is_page_rounding_when_the_ce_hole_is_closed():
    # fp32 low-rank head (replay kappa 0): reserved = the tensor peak rounded up to a 2 MiB page + the small
    # pool's page.
    e = estimate(PRESETS["8gb"].replace(dtype="float32", head="low_rank", head_rank=64), calibration=None)
    assert e.ce_hole_kappa == 0.0 and e.kappa_source == "replay"
    assert 1 / 1024 <= e.allocator_gib <= 4 / 1024 + 1e-12
    # bf16: the CE backward's hole adds kappa F on top of the tensor at that moment, when that is above the peak.
    b = estimate(PRESETS["8gb"], calibration=None)
    assert b.allocator_class == "amp" and 0.5 <= b.ce_hole_kappa < 0.7
    high = max(b.tensor_gib, b.ce_backward_gib + b.ce_hole_kappa * b.ce_chunk_gib)
    assert b.allocator_gib == pytest.approx(high - b.tensor_gib, abs=4 / 1024)
    assert b.allocator_for(b.tensor_gib) == pytest.approx(b.allocator_gib, rel=1e-9)
    # observed_kappa inverts allocator_for
    assert b.observed_kappa(b.tensor_gib, b.allocator_for(b.tensor_gib, kappa=0.7)) == pytest.approx(0.7, abs=0.01)


def test_the_calibration_passed_in_is_the_outside_part_and_nothing_is_read_from_disk(tmp_path, monkeypatch):
    """estimate() is pure: the caller loads the calibration. A stored calibration with a 5 GiB outside part sits at
    the default path; were estimate() to read it (on this GPU-less machine it would be borrowed), the plain
    estimate's outside part would not be 0."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    stored = save_calibration(calibration(outside_gib=5.0))
    assert stored == default_path() and stored.is_relative_to(tmp_path)
    before = stored.read_bytes()
    given_cal = calibration(device="GPU X", outside_gib=0.75, workspace_gib=0.0)
    plain = estimate(PRESETS["8gb"], calibration=None)
    given = estimate(PRESETS["8gb"], given_cal, calibrated=True, calibration_source="test")
    assert plain.outside_gib == 0.0 and not plain.calibrated
    assert given.outside_gib == pytest.approx(0.75) and given.calibrated
    assert given.total_gib == pytest.approx(plain.total_gib + 0.75)
    assert stored.read_bytes() == before  # nor written


def test_recompute_hole_sets_the_allocator_part_where_the_recomputed_blocks_peak():
    # Long sequence, small vocabulary, checkpointed blocks: the recomputed blocks' backward is the tensor peak, so
    # the segment ends one FFN hidden [N, 4D] (bf16) above it (+ page rounding and the small pool's page).
    c = Phase1Config.from_dict(
        {**TINY, "use_gradient_checkpointing": True, "n_seq": 1024, "batch_size": 8, "d_model": 256}
    )
    e = estimate(c, calibration=None)
    assert e.peak_moment.startswith("backward: block") and e.recompute_gib == pytest.approx(e.tensor_gib)
    n, d = c.batch_size * c.n_seq, c.d_model
    assert e.recompute_hole_gib * 2**30 == 2 * n * 4 * d
    assert e.recompute_hole_gib <= e.allocator_gib <= e.recompute_hole_gib + 4 / 1024
    assert e.allocator_for(e.tensor_gib) == pytest.approx(e.allocator_gib, rel=1e-9)
    # a measured gap that the recompute hole explains says nothing about the CE hole's kappa
    assert e.observed_kappa(e.tensor_gib, e.allocator_gib) is None
    # without checkpointing nothing is recomputed: no hole, the allocator part is page rounding / the CE hole
    plain = estimate(c.replace(use_gradient_checkpointing=False), calibration=None)
    assert plain.recompute_hole_gib == 0.0 and plain.recompute_gib == 0.0
    assert plain.allocator_gib < 4 / 1024 + plain.ce_hole_kappa * plain.ce_chunk_gib


def test_recompute_hole_leaves_a_ce_bound_estimate_unchanged():
    # The 8 GiB preset checkpoints its blocks, but its CE backward (+ kappa F) is far above the recomputed blocks'
    # moment + hole: the allocator part is the CE model's alone.
    e = estimate(PRESETS["8gb"], calibration=calibration())
    assert e.recompute_hole_gib > 0 and e.recompute_gib + e.recompute_hole_gib < e.ce_backward_gib
    high = e.ce_backward_gib + e.ce_hole_kappa * e.ce_chunk_gib
    assert e.allocator_gib == pytest.approx(high - e.tensor_gib, abs=4 / 1024)
