"""LNS format (encode/decode error bounds, zero, sign) and the Triton matmul against its torch reference.

The Triton kernel runs in the interpreter on CPU (TRITON_INTERPRET=1 from tests/conftest.py).

Error bound of the format (derivation): the code stores log2|w| rounded to the nearest multiple of 2^-f, so the log
error is at most 2^-(f+1) and the decoded magnitude is |w| * 2^e with |e| <= 2^-(f+1): the relative error is at
most 2^(2^-(f+1)) - 1 = 2.190e-2 (8 bits, f = 4) and 1.692e-4 (16 bits, f = 11), for weights inside the code
range. Below it (|w| < w_min, the smallest magnitude) the weight goes to the nearer of 0 and w_min: absolute error
at most w_min / 2.

Kernel vs reference tolerances (normwise relative error ||y - y_ref|| / ||y_ref||; max error / max |y_ref|), for
every M (small M included: one tiled kernel serves all):
  fp32: 2e-3, 2^-10  (interpreter: fp32 dot, ~2e-7; GPU: tf32 operands, unit roundoff 2^-11)
  bf16: 1e-2, 2^-6   (decoded tile and output rounded to bf16, unit roundoff 2^-9; measured 2.4e-3)
  fp16: 2e-3, 2^-9   (unit roundoff 2^-12 on tile and output; measured 3e-4)
The in-kernel decode (exact for every code) is tested in test_lns_decode.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import kernels.lns as lns
from kernels.lns import (
    DEFAULT_FRAC_BITS,
    LNSWeight,
    lns_decode,
    lns_encode,
    lns_logadd_matmul_ref,
    lns_matmul,
    lns_matmul_ref,
    relative_error_bound,
)

TOL = {  # dtype: (normwise relative, max abs / max |ref|)
    torch.float32: (2e-3, 2.0**-10),
    torch.bfloat16: (1e-2, 2.0**-6),
    torch.float16: (2e-3, 2.0**-9),
}


def assert_close_to_ref(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    y, ref = y.double(), ref.double()
    norm_tol, max_tol = TOL[dtype]
    rel = ((y - ref).norm() / ref.norm()).item()
    worst = ((y - ref).abs().max() / ref.abs().max()).item()
    assert rel <= norm_tol and worst <= max_tol, f"{dtype}: normwise {rel:.3e} (tol {norm_tol:.1e}), " \
                                                 f"max {worst:.3e} (tol {max_tol:.1e})"


# --- format --------------------------------------------------------------------------------------------------


def test_stated_bounds_follow_from_the_bit_split():
    assert DEFAULT_FRAC_BITS == {8: 4, 16: 11}
    assert relative_error_bound(8) == pytest.approx(2.0 ** (2.0**-5) - 1) == pytest.approx(2.190e-2, rel=1e-3)
    assert relative_error_bound(16) == pytest.approx(2.0 ** (2.0**-12) - 1) == pytest.approx(1.692e-4, rel=1e-3)


@pytest.mark.parametrize("bits", [8, 16])
def test_roundtrip_relative_error_is_within_the_bound_and_the_bound_is_tight(bits):
    torch.manual_seed(bits)
    # Log-uniform magnitudes over 4 octaves under each row's max, random signs, very different row scales.
    mags = torch.exp2(-4 * torch.rand(16, 512, dtype=torch.float64)) * torch.exp2(torch.arange(16.0) - 8)[:, None]
    w = mags * torch.where(torch.rand_like(mags) < 0.5, -1.0, 1.0)
    lw = lns_encode(w, bits)
    assert lw.codes.dtype == (torch.int8 if bits == 8 else torch.int16) and lw.offsets.dtype == torch.int32
    rel = ((lns_decode(lw).double() - w).abs() / w.abs())
    bound = relative_error_bound(bits)
    assert rel.max().item() <= bound * (1 + 1e-5) + 1e-6  # + fp32 decode rounding
    # Tight: with 8192 uniformly placed log values, some land near a half step, so a finer format would fail this.
    assert rel.max().item() >= 0.9 * bound


@pytest.mark.parametrize("bits", [8, 16])
def test_below_range_goes_to_the_nearer_of_zero_and_the_smallest_magnitude(bits):
    f, q = DEFAULT_FRAC_BITS[bits], (1 << (bits - 1)) - 1
    w = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]])
    lw = lns_encode(w, bits)
    w_min = 2.0 ** ((lw.offsets[0].item() + 1 - q) / 2**f)
    assert w_min == pytest.approx(2.0 ** (-(q - 1) / 2**f))  # max = 1 sits exactly at code Q
    w = torch.tensor([[1.0, 0.49 * w_min, 0.51 * w_min, -0.9 * w_min, 1e-30]], dtype=torch.float64)
    got = lns_decode(lns_encode(w, bits), torch.float64)[0]
    assert got.tolist() == pytest.approx([1.0, 0.0, w_min, -w_min, 0.0], rel=1e-6)
    assert ((got - w[0]).abs() <= w_min / 2 + 1e-12).all()


@pytest.mark.parametrize("bits", [8, 16])
def test_zero_sign_and_code_range(bits):
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    w = torch.sign(w) * w.abs().clamp(min=0.1)  # inside the code range: only the exact zeros below get code 0
    w[:, ::5] = 0.0
    w[3] = 0.0  # an all-zero output channel
    lw = lns_encode(w, bits)
    q = lw.max_code
    assert (lw.codes[w == 0] == 0).all() and (lw.codes[w != 0] != 0).all()
    assert int(lw.codes.min()) >= -q and int(lw.codes.max()) <= q  # -2^(bits-1) ("negative zero") never written
    dec = lns_decode(lw)
    assert (dec[w == 0] == 0).all() and (dec[3] == 0).all()
    assert torch.equal(torch.sign(dec), torch.sign(w))
    assert torch.equal(lns_encode(-w, bits).codes, -lw.codes)
    # Powers of two on the fixed-point grid are exact.
    exact = torch.tensor([[2.0, -1.0, 0.5, -0.25, 2.0**-3]])
    assert torch.equal(lns_decode(lns_encode(exact, bits)), exact)


def test_tensor_granularity_shares_one_offset_and_loses_small_rows():
    w = torch.stack([torch.linspace(0.5, 1.0, 32), torch.linspace(0.5, 1.0, 32) * 2.0**-20])
    per_channel, per_tensor = lns_encode(w, 8), lns_encode(w, 8, granularity="tensor")
    assert per_tensor.offsets[0] == per_tensor.offsets[1] and per_channel.offsets[0] != per_channel.offsets[1]
    assert (lns_decode(per_tensor)[1] == 0).all()  # 20 octaves down: outside an 8-bit tensor-wide range
    assert ((lns_decode(per_channel)[1] - w[1]).abs() / w[1]).max() <= relative_error_bound(8) * (1 + 1e-5)


@pytest.mark.parametrize("bad, match", [
    (dict(bits=4), "bits: 4"),
    (dict(bits=8, frac_bits=7), "frac_bits: 7"),
    (dict(bits=8, granularity="row"), "granularity: 'row'"),
])
def test_encode_rejects_bad_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        lns_encode(torch.randn(4, 4), **bad)


def test_encode_rejects_bad_weights():
    with pytest.raises(ValueError, match="2-D"):
        lns_encode(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="inf or NaN"):
        lns_encode(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="not a floating type"):
        lns_encode(torch.ones(2, 2, dtype=torch.int32))


# --- Triton matmul vs reference ------------------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [(16, 16, 16), (32, 64, 16), (64, 16, 32)], ids=lambda b: "B{}x{}x{}".format(*b))
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_triton_matches_reference_on_odd_shapes(dtype, bits, blocks):
    torch.manual_seed(1)
    M, N, K = 33, 47, 65  # no multiple of any block: every mask is exercised
    x = torch.randn(M, K).to(dtype)
    lw = lns_encode(torch.randn(N, K) * 0.05, bits)
    bias = torch.randn(N)
    y = lns_matmul(x, lw, *blocks, backend="triton", bias=bias)
    assert y.dtype == dtype and y.shape == (M, N)
    assert_close_to_ref(y, lns_matmul_ref(x, lw, bias), dtype)


def test_triton_handles_strided_input_and_no_bias():
    torch.manual_seed(2)
    x = torch.randn(65, 33, dtype=torch.float16).t()  # [33, 65], K stride 33: not contiguous
    lw = lns_encode(torch.randn(20, 65), 8)
    assert_close_to_ref(lns_matmul(x, lw, 16, 32, 16, backend="triton"), lns_matmul_ref(x, lw), torch.float16)


@pytest.mark.parametrize("M", [1, 3, 17, 64, 65])
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_small_m_matches_reference_on_odd_shapes(dtype, bits, M):
    """Decode-like batches through the tiled kernel with its default tiles (128, 128, 32): one mostly-masked row
    tile. (The default variant, auto, runs small-M kernels here: tests/kernels/test_lns_small.py.)"""
    torch.manual_seed(6)
    N, K = 47, 301
    x = torch.randn(M, K).to(dtype)
    lw = lns_encode(torch.randn(N, K) * 0.05, bits)
    bias = torch.randn(N)
    y = lns_matmul(x, lw, backend="triton", bias=bias, variant="tiled")
    assert y.dtype == dtype and y.shape == (M, N)
    assert_close_to_ref(y, lns_matmul_ref(x, lw, bias), dtype)
    assert_close_to_ref(lns_matmul(x, lw, backend="triton", bias=bias), lns_matmul_ref(x, lw, bias), dtype)  # auto


def test_small_m_handles_strided_input():
    torch.manual_seed(8)
    x = torch.randn(65, 5, dtype=torch.float16).t()  # [5, 65], K stride 5: not contiguous
    lw = lns_encode(torch.randn(20, 65), 8)
    assert_close_to_ref(lns_matmul(x, lw, backend="triton"), lns_matmul_ref(x, lw), torch.float16)


def test_kernel_decodes_tiles_to_bf16_and_scales_in_the_epilogue():
    """The kernel's exact arithmetic, emulated in torch: normalised codes rounded to bf16, fp32 sums, channel scale.

    Against this emulation the kernel agrees to fp32 summation order; against the fp32-decoded reference it
    differs by ~2e-3 (bf16 rounding), so this test tells the two apart.
    """
    torch.manual_seed(3)
    x = torch.randn(40, 48).bfloat16()
    lw = lns_encode(torch.randn(24, 48), 8)
    scale = torch.exp2(lw.offsets.float() / 2**lw.frac_bits)
    w_norm = (lns_decode(lw) / scale[:, None]).bfloat16().float()
    emulated = ((x.float() @ w_norm.t()) * scale).bfloat16().double()
    y = lns_matmul(x, lw, 16, 16, 16, backend="triton").double()
    assert ((y - emulated).norm() / emulated.norm()).item() < 1e-5
    ref = lns_matmul_ref(x, lw).double()
    assert ((ref - emulated).norm() / emulated.norm()).item() > 1e-4


def test_block_sizes_are_the_kernels_real_tiles(monkeypatch):
    launches = []
    kernel = lns._lns_matmul_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append((grid, kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["BLOCK_K"]))
                return kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(lns, "_lns_matmul_kernel", Spy())
    lw = lns_encode(torch.randn(47, 65), 8)
    # M = 1 too: variant="tiled" runs this kernel with the caller's tiles for every M, however small (the default,
    # "auto", sends M <= 64 to the small-M kernels: tests/kernels/test_lns_variants.py).
    for M, bm, bn, bk in [(33, 16, 16, 16), (33, 32, 64, 32), (1, 128, 32, 64)]:
        lns_matmul(torch.randn(M, 65), lw, bm, bn, bk, backend="triton", variant="tiled")
    assert launches == [((3 * 3,), 16, 16, 16), ((2 * 1,), 32, 64, 32), ((1 * 2,), 128, 32, 64)]


@pytest.mark.parametrize("blocks, name", [
    ((48, 16, 16), "block_m: 48"), ((16, 8, 16), "block_n: 8"), ((16, 16, 512), "block_k: 512"),
    ((16, 16, True), "block_k: True"), ((16.0, 16, 16), "block_m: 16.0"),
])
def test_invalid_block_sizes_are_rejected(blocks, name):
    lw = lns_encode(torch.randn(4, 16), 8)
    for backend in ("triton", "torch"):
        with pytest.raises(ValueError, match=name):
            lns_matmul(torch.randn(2, 16), lw, *blocks, backend=backend)


def test_wrapper_validates_inputs():
    lw = lns_encode(torch.randn(4, 16), 8)
    with pytest.raises(ValueError, match="K = 15"):
        lns_matmul(torch.randn(2, 15), lw)
    with pytest.raises(ValueError, match="2-D"):
        lns_matmul(torch.randn(16), lw)
    with pytest.raises(ValueError, match="torch.float64"):
        lns_matmul(torch.randn(2, 16, dtype=torch.float64), lw)
    with pytest.raises(ValueError, match="backend: 'cuda'"):
        lns_matmul(torch.randn(2, 16), lw, backend="cuda")
    with pytest.raises(ValueError, match="LNSWeight"):
        lns_matmul(torch.randn(2, 16), torch.randn(4, 16))
    with pytest.raises(ValueError, match="bias"):
        lns_matmul(torch.randn(2, 16), lw, bias=torch.randn(5))
    with pytest.raises(ValueError, match="inconsistent"):
        lns_matmul(torch.randn(2, 16), LNSWeight(lw.codes, lw.offsets, 16, 11))
    with pytest.raises(ValueError, match="meta"):
        lns_matmul(torch.randn(2, 16), lw.to("meta"))


def test_inference_only_refuses_inputs_that_need_gradients():
    lw = lns_encode(torch.randn(4, 16), 8)
    x = torch.randn(2, 16, requires_grad=True)
    with pytest.raises(ValueError, match="inference-only"):
        lns_matmul(x, lw)
    with torch.no_grad():
        assert lns_matmul(x, lw).shape == (2, 4)


def test_auto_backend_on_cpu_is_the_reference_and_empty_batches_work():
    torch.manual_seed(4)
    x = torch.randn(5, 16)
    lw = lns_encode(torch.randn(4, 16), 16)
    assert torch.equal(lns_matmul(x, lw), lns_matmul_ref(x, lw))
    assert lns_matmul(torch.randn(0, 16), lw, backend="triton").shape == (0, 4)
    assert torch.allclose(lns_matmul_ref(x, lw), x @ lns_decode(lw).t())
    assert math.isclose(lw.nbytes(), 4 * 16 * 2 + 4 * 4)


# --- log-domain accumulate experiment (accuracy only) ----------------------------------------------------------


def test_log_domain_accumulate_is_exact_with_a_fine_accumulator_and_coarse_in_pure_lns():
    torch.manual_seed(5)
    x, w = torch.randn(8, 64), torch.randn(12, 64) * 0.02
    lw = lns_encode(w, 8)
    xd = lns_decode(lns_encode(x, 8), torch.float64)
    exact = xd @ lns_decode(lw, torch.float64).t()  # the same LNS operands, summed in float64

    def err(frac):
        return ((lns_logadd_matmul_ref(x, lw, frac) - exact).norm() / exact.norm()).item()

    assert err(40) < 1e-9  # the correction term is exact; only the 2^-40 log rounding remains
    # Measured at x [16, 256], w [24, 256]: pure 8-bit LNS accumulator (f = 4) 14% error, f = 8 0.9%,
    # f = 12 5e-4 (each step rounds the log); here K = 64, so only the ordering is asserted.
    assert err(None) > 10 * err(12) > 0
    # Opposite signs of equal magnitude cancel to exact zero; zero codes are skipped.
    lw2 = lns_encode(torch.tensor([[1.0, 1.0], [1.0, -1.0]]), 8)
    got = lns_logadd_matmul_ref(torch.tensor([[1.0, -1.0], [0.0, 0.0], [2.0, 0.0]]), lw2)
    assert got.tolist() == [[0.0, 2.0], [0.0, 0.0], [2.0, 2.0]]


# --- benchmark script: correctness gate and CPU smoke run ------------------------------------------------------


def _bench_module():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "lns_bench.py"
    spec = importlib.util.spec_from_file_location("lns_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_smoke_runs_the_real_kernel_on_cpu():
    rows = _bench_module().bench_lns(torch.device("cpu"), shapes=[(20, 32, 16)], blocks=[(16, 16, 16)], bits_list=(8,))
    (row,) = rows
    assert row["check_rel_err_vs_ref"] <= row["check_tol"] and row["weight_bytes_lns"] == 16 * 32 + 16 * 4
    assert row["rel_err_lns_vs_original"] < relative_error_bound(8) and row["lns_ms"] > 0
    assert "not a speed figure" in row["timer"]


def test_bench_refuses_to_report_a_kernel_that_disagrees(monkeypatch):
    real = lns.lns_matmul
    monkeypatch.setattr(lns, "lns_matmul", lambda *a, **k: real(*a, **{**k, "backend": "torch"}) * 1.01)
    with pytest.raises(RuntimeError, match="not reporting"):
        _bench_module().bench_lns(torch.device("cpu"), shapes=[(20, 32, 16)], blocks=[(16, 16, 16)], bits_list=(8,))


def test_bench_runs_a_baseline_module_beside_the_kernel():
    bench = _bench_module()
    # Any module with `lns_matmul` and `LNSWeight` serves as the baseline; here a second import of this tree's.
    old = bench.load_baseline(lns.__file__)
    assert old.LNSWeight is not LNSWeight
    rows = bench.bench_lns(torch.device("cpu"), shapes=[(3, 32, 16), (20, 32, 16)], blocks=[(16, 16, 16), (32, 16, 16)],
                           bits_list=(8,), baseline=old)
    # One row per (impl, shape, tiles), small M included, in that order. The baseline's rows carry the caller's
    # tiles; this tree's lns_matmul (variant="auto") sends these small M to a small-M kernel, and its rows say so.
    assert [(r["impl"], r["M"], r["block_m"] if r["impl"] == "old" else r["variant"]) for r in rows] == [
        (impl, M, bm if impl == "old" else lns.auto_variant(M)[0])
        for M in (3, 20) for impl in ("new", "old") for bm in (16, 32)]
    assert {r["variant"] for r in rows if r["impl"] == "new"} == {"skinny"}
    for r in rows:
        assert r["check_rel_err_vs_ref"] <= r["check_tol"] and r["speedup_vs_torch_fp16"] > 0
        assert (r["M"], r["K"], r["N"]) in [(3, 32, 16), (20, 32, 16)]


def test_bench_refuses_a_baseline_that_disagrees(monkeypatch):
    bench = _bench_module()
    old = bench.load_baseline(lns.__file__)
    real = old.lns_matmul
    monkeypatch.setattr(old, "lns_matmul", lambda *a, **k: real(*a, **k) * 1.01)
    with pytest.raises(RuntimeError, match="old lns_matmul disagrees.*not reporting"):
        bench.bench_lns(torch.device("cpu"), shapes=[(20, 32, 16)], blocks=[(16, 16, 16)], bits_list=(8,),
                        baseline=old)


def test_bench_refuses_a_kernel_whose_output_changes_between_calls(monkeypatch):
    real = lns.lns_matmul
    calls = []

    def drifting(*a, **k):  # right on the checked call, 1% off from the next one on
        calls.append(1)
        return real(*a, **k) * (1.0 if len(calls) == 1 else 1.01)

    monkeypatch.setattr(lns, "lns_matmul", drifting)
    with pytest.raises(RuntimeError, match="not repeatable.*not reporting"):
        _bench_module().bench_lns(torch.device("cpu"), shapes=[(20, 32, 16)], blocks=[(16, 16, 16)], bits_list=(8,))
