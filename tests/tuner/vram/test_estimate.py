"""tuner.vram.estimate: fast, torch-free arithmetic whose tensor-bytes part matches a real CPU training peak.

Tolerance of the CPU validation: the predicted tensor peak is within 5 % of the peak that model.train measures with
its TensorMemoryTracker (kind "cpu_tensor_bytes") over two real training steps and one evaluation of tiny models.
(The tracker sees every storage an op returns, not scratch freed inside a kernel, and does not round to the CUDA
allocator's 512-byte blocks that the prediction includes; at these shapes those two effects are below 1 %.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from model.config import PRESETS, Phase1Config
from tuner.vram.estimate import allocator as est_alloc
from tuner.vram.estimate.predict import estimate

TOLERANCE = 0.05

TINY = dict(
    vocab_size=500,
    d_model=128,
    n_layers=2,
    n_seq=128,
    batch_size=4,
    loss_chunk_size=32,
    ffn_rank=16,
    ar_ssm_max_rank=16,
    ar_ssm_min_rank=4,
    htt_rank=8,
    stability_monitoring_enabled=False,
)


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


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(dict(), id="bf16-ckpt"),
        pytest.param(dict(dtype="float32", use_gradient_checkpointing=False), id="fp32-nockpt"),
        pytest.param(
            dict(
                use_gradient_checkpointing=False,
                checkpoint_ar_ssm=True,
                checkpoint_htt=True,
                loss_chunk_size=0,
                head="low_rank",
                head_rank=32,
                htt_num_cores=3,
            ),
            id="bf16-ckpt-mixer-htt-unchunked-lowrank-3cores",
        ),
    ],
)
def test_tensor_bytes_match_a_real_cpu_training_peak(fields):
    from model.train import train_and_evaluate
    from tuner.vram.calibrate import synthetic_token_data

    cfg = Phase1Config(**{**TINY, **fields})
    data = synthetic_token_data(cfg.vocab_size, 4096, seed=1)
    result = train_and_evaluate(
        cfg, data, train_tokens=2 * cfg.batch_size * cfg.n_seq, eval_tokens=cfg.n_seq, device="cpu"
    )
    assert result.peak_memory_kind == "cpu_tensor_bytes"
    predicted = estimate(cfg, device="cpu").tensor_gib
    assert predicted == pytest.approx(result.peak_torch_gib, rel=TOLERANCE), (predicted, result.peak_torch_gib)


def _activation_gib(e) -> float:
    return sum(
        v
        for k, v in e.components.items()
        if k.startswith(("activations", "recomputed", "logits", "backward_temp", "forward_temp"))
    )


@pytest.mark.parametrize("flag", ["use_gradient_checkpointing", "checkpoint_ar_ssm", "checkpoint_htt"])
def test_each_checkpoint_flag_lowers_the_activation_part(flag):
    off = Phase1Config(
        **{
            **TINY,
            "use_gradient_checkpointing": False,
            "checkpoint_ar_ssm": False,
            "checkpoint_htt": False,
            "n_layers": 6,
            "vocab_size": 64,
            "loss_chunk_size": 16,
        }
    )
    on = off.replace(**{flag: True})
    e_off, e_on = estimate(off, device="cpu"), estimate(on, device="cpu")
    assert _activation_gib(e_on) < _activation_gib(e_off)
    assert e_on.tensor_gib < e_off.tensor_gib


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


# --- CLI -------------------------------------------------------------------------------------------------


STUDY = """
name: est
vram_ceiling_gib: 8
model: {d_model: 64, n_layers: 2, vocab_size: 500, n_seq: 64}
search_space:
  ar_ssm_max_rank: {type: int, low: 8, high: 32, step: 8}
  use_gradient_checkpointing: {type: categorical, choices: [true, false]}
data: {source: stdlib}
budget: {train_tokens: 20000, eval_tokens: 2000, trial_timeout_s: 600}
"""


def test_cli_json_shape(capsys):
    from tuner.cli import main

    assert main(["estimate", "--preset", "8gb", "--batch-size", "2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["batch_size"] == 2
    assert set(d) >= {"total_gib", "tensor_gib", "allocator_gib", "outside_gib", "components", "calibrated"}
    assert d["components"]["logits_loss"] > 0


def test_cli_study_params_and_table(tmp_path, capsys):
    from tuner.cli import main

    study = tmp_path / "s.yaml"
    study.write_text(STUDY)
    assert main(["estimate", str(study), "--params", "ar_ssm_max_rank=16,use_gradient_checkpointing=false"]) == 0
    out = capsys.readouterr().out
    assert "predicted peak" in out and "tensor bytes" in out and "outside the allocator" in out


@pytest.mark.parametrize("params", ["ar_ssm_max_rank", "nope=3", "ar_ssm_max_rank=0"])
def test_cli_bad_params_one_line_error(tmp_path, capsys, params):
    from tuner.cli import main

    study = tmp_path / "s.yaml"
    study.write_text(STUDY)
    assert main(["estimate", str(study), "--params", params]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


# --- allocator model (expandable segments) --------------------------------------------------------------------


def test_segment_replay_monotone_allocations_leave_no_gap():
    # Allocations only (no frees): the segment's end is exactly the live bytes, whatever the sizes.
    ev = [("alloc", f"t{i}", (i % 7 + 1) * 1024 * 512) for i in range(40)]
    assert est_alloc._segment_gap(ev) == 0
    # Stack-like use (free the newest, then ask for no more than was freed) refills the end: still no gap.
    ev = [
        ("alloc", "a", 4 << 20),
        ("alloc", "b", 8 << 20),
        ("free", "b", 0),
        ("alloc", "c", 6 << 20),
        ("alloc", "d", 2 << 20),
        ("free", "a", 0),
        ("alloc", "e", 4 << 20),
    ]
    assert est_alloc._segment_gap(ev) == 0


def test_segment_replay_grows_past_a_too_small_hole():
    # A 3 MiB hole, then a 4 MiB request: it cannot use the hole and extends the end (best fit, no moving).
    mib = 1 << 20
    ev = [("alloc", "a", 3 * mib), ("alloc", "b", 5 * mib), ("free", "a", 0), ("alloc", "c", 4 * mib)]
    assert est_alloc._segment_gap(ev) == 3 * mib
    # A free block at the end is grown in place rather than left behind.
    ev = [("alloc", "a", 5 * mib), ("alloc", "b", 2 * mib), ("free", "b", 0), ("alloc", "c", 3 * mib)]
    assert est_alloc._segment_gap(ev) == 0


def test_ce_backward_replay_kappa():
    # Plain-head chunk (no table blocks): under autocast the freed bf16 logits (0.5 F) cannot take the
    # log-softmax gradient (F), which extends the segment by exactly 0.5 F; in fp32 `.float()` is the same tensor
    # and the freed logits (F) take the nll gradient exactly: no growth.
    low = Phase1Config.from_dict({**TINY, "vocab_size": 50257, "head": "low_rank", "head_rank": 8})
    rows = 2048
    f = 4 * rows * low.vocab_size
    gap = est_alloc._segment_gap(est_alloc.ce_backward_events(low, rows))
    assert abs(gap - f // 2) <= 2 * est_alloc.BLOCK
    assert est_alloc._segment_gap(est_alloc.ce_backward_events(low.replace(dtype="float32"), rows)) == 0
    # Unchunked: the previous step's logits, freed when model() returns, leave the same 0.5 F hole.
    gap_u = est_alloc._segment_gap(est_alloc.ce_backward_events(low, rows, chunked=False))
    assert abs(gap_u - f // 2) <= 2 * est_alloc.BLOCK
    # Tied head: the table blocks kept between the logits buffer and its fp32 copy add their parts' holes. These
    # figures equal a replay of the full allocation trace of real CPU training steps (profiler memory events) of
    # d_model 256, vocab 50257, B 2, n_seq 512 / chunk 256 (and unchunked n_seq 256): 0.580 bf16, 0.140 fp32.
    tied = Phase1Config.from_dict(
        {**TINY, "vocab_size": 50257, "d_model": 256, "n_seq": 512, "batch_size": 2, "loss_chunk_size": 256}
    )
    assert est_alloc.replay_kappa(tied, 512, True) == pytest.approx(0.580, abs=0.005)
    assert est_alloc.replay_kappa(tied.replace(dtype="float32"), 512, True) == pytest.approx(0.140, abs=0.005)


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
