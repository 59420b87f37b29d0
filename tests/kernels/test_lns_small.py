"""The small-M LNS matmul variants (kernels/lns_small.py, and "tiled_bits") against the torch reference on odd
shapes, in the Triton interpreter (TRITON_INTERPRET=1 from tests/conftest.py); the tolerances are those of
test_lns.py (the variants compute the same sums: same decoded magnitudes, fp32 accumulation, scale after K).
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

import kernels.lns as lns
from kernels.lns import VARIANTS, lns_encode, lns_matmul, lns_matmul_ref
from kernels.lns_small import small_m_tiles, split_k_slices
from tests.kernels.test_lns import assert_close_to_ref

N, K = 40, 200  # no multiple of any variant's tiles (N: 8/32/64, K: 128/512): every mask is exercised


def _case(M, bits, dtype, seed=6):
    torch.manual_seed(seed)
    x = torch.randn(M, K).to(dtype)
    lw = lns_encode(torch.randn(N, K) * 0.05, bits)
    return x, lw, torch.randn(N)


def _odd_shape_cases() -> list[tuple[str, torch.dtype, int, int]]:
    """(variant, dtype, bits, M) for every small-M variant, pruned where a case adds nothing but interpreter time:
    the bits decode serves 8-bit codes only (the variant without _bits covers 16-bit codes; tiled_bits' refusal is
    tested below); the _bits variants run their exp2 twins' kernels, so M = 1, 17, 65 cover their masks; gemv decodes
    once per row, so M = 64/65 runs for one format only."""
    cases = []
    for variant in (v for v in VARIANTS if v != "tiled"):
        for dtype in (torch.float16, torch.bfloat16):
            for bits in (8, 16):
                for m in (1, 3, 17, 64, 65):
                    if variant.endswith("_bits") and (bits == 16 or m in (3, 64)):
                        continue
                    if variant.startswith("gemv") and m > 17 and (bits, dtype) != (8, torch.float16):
                        continue
                    cases.append((variant, dtype, bits, m))
    return cases


@pytest.mark.parametrize(("variant", "dtype", "bits", "M"), _odd_shape_cases(), ids=str)
def test_variant_matches_reference_on_odd_shapes(variant, dtype, bits, M):
    x, lw, bias = _case(M, bits, dtype)
    y = lns_matmul(x, lw, 16, 32, 64, backend="triton", bias=bias, variant=variant)
    assert y.dtype == dtype and y.shape == (M, N)
    assert_close_to_ref(y, lns_matmul_ref(x, lw, bias), dtype)


@pytest.mark.parametrize("M", [1, 17])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "tiled"])
def test_variant_on_whole_tiles_takes_the_unmasked_path(variant, dtype, M):
    """N = 64, K = 512: whole column tiles and K steps (slices) for every variant, so the launchers pick EVEN."""
    torch.manual_seed(9)
    x = torch.randn(M, 512).to(dtype)
    lw = lns_encode(torch.randn(64, 512) * 0.05, 8)
    bias = torch.randn(64)
    y = lns_matmul(x, lw, backend="triton", bias=bias, variant=variant)
    assert_close_to_ref(y, lns_matmul_ref(x, lw, bias), dtype)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "tiled"])
def test_variant_fp32_strided_input_and_no_bias(variant):
    torch.manual_seed(8)
    x = torch.randn(K, 5).t()  # [5, K], K stride 5: not contiguous
    lw = lns_encode(torch.randn(N, K), 8)
    assert_close_to_ref(lns_matmul(x, lw, 16, 16, 32, backend="triton", variant=variant), lns_matmul_ref(x, lw),
                        torch.float32)


def test_split_k_really_splits_and_is_deterministic():
    assert split_k_slices(3, N, K, 64, 128) == (2, 128)  # one column tile: both K steps become slices
    assert small_m_tiles("skinny_splitk", 1, 4096, 4096) == (16, 64, 128, 8)  # 64 tiles x 8 slices >= 264
    assert split_k_slices(64, 4096, 4096, 32, 128) == (4, 1024)  # 128 tiles x 4, each slice 8 full K steps
    assert small_m_tiles("skinny", 17, 4096, 4096) == (32, 32, 128, 1)
    x, lw, bias = _case(3, 8, torch.float16)
    y = lns_matmul(x, lw, backend="triton", bias=bias, variant="skinny_splitk")
    assert torch.equal(y, lns_matmul(x, lw, backend="triton", bias=bias, variant="skinny_splitk"))
    assert_close_to_ref(y, lns_matmul_ref(x, lw, bias), torch.float16)


def test_variants_are_checked():
    x, lw, _ = _case(2, 16, torch.float16)
    with pytest.raises(ValueError, match="variant: 'tiled_bits' decodes 8-bit codes.*use variant='tiled'"):
        lns_matmul(x, lw, backend="triton", variant="tiled_bits")
    with pytest.raises(ValueError, match="variant: 'fast' is not supported.*'auto'"):
        lns_matmul(x, lw, variant="fast")
    with pytest.raises(ValueError, match="not a small-M variant"):
        small_m_tiles("tiled", 1, 8, 8)
    assert lns_matmul(x[:0], lw, backend="triton", variant="gemv").shape == (0, N)


# --- bench/lns_bench.py --small-m ----------------------------------------------------------------------------


def _bench():
    path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "lns_bench.py"
    spec = importlib.util.spec_from_file_location("lns_bench_small", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_m_bench_checks_and_times_every_variant_on_cpu(monkeypatch):
    bench = _bench()
    monkeypatch.setattr(bench, "SMALL_M_TINY_SHAPES", [(3, 48, 20)])
    rows = bench.bench_small_m(torch.device("cpu"), tiny=True)
    assert {r["variant"] for r in rows} == set(VARIANTS) - {"skinny_bits", "skinny_splitk_bits"}
    for r in rows:
        assert {"variant", "M", "K", "N", "ms", "torch_fp16_ms", "speedup_vs_torch_fp16", "gbps"} <= r.keys()
        assert (r["M"], r["K"], r["N"]) == (3, 48, 20) and r["check_rel_err_vs_ref"] <= bench.CHECK_TOL
        assert "not a speed figure" in r["timer"]
        assert r["graph_ms"] is None and r["graph_speedup_vs_torch_fp16"] is None  # CUDA graphs: GPU only
    assert [r["block_n"] for r in rows if r["variant"] == "gemv"] == [8]  # the tiles it really launched
    assert [r["block_n"] for r in rows if r["variant"] == "skinny"] == [32, 16]


def test_small_m_bench_refuses_a_wrong_variant(monkeypatch):
    bench = _bench()
    monkeypatch.setattr(bench, "SMALL_M_TINY_SHAPES", [(3, 48, 20)])
    real = lns.lns_matmul
    monkeypatch.setattr(lns, "lns_matmul", lambda *a, **k: real(*a, **k) * (1.01 if k["variant"] == "gemv" else 1))
    with pytest.raises(RuntimeError, match="variant gemv .*disagrees.*not reporting"):
        bench.bench_small_m(torch.device("cpu"), tiny=True)


def test_small_m_bench_keep_going_records_the_failure_without_a_figure(monkeypatch):
    bench = _bench()
    monkeypatch.setattr(bench, "SMALL_M_TINY_SHAPES", [(3, 48, 20)])
    real = lns.lns_matmul
    monkeypatch.setattr(lns, "lns_matmul", lambda *a, **k: real(*a, **k) * (1.01 if k["variant"] == "gemv" else 1))
    rows = bench.bench_small_m(torch.device("cpu"), tiny=True, keep_going=True)
    (bad,) = [r for r in rows if "error" in r]
    assert bad["variant"] == "gemv" and "disagrees" in bad["error"] and "ms" not in bad
    assert all("ms" in r for r in rows if r is not bad) and len(rows) == len(bench.small_m_configs(3))
