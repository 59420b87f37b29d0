"""variant="auto" (kernels/lns_variants.py): the per-M table picks the small-M kernel and its tiles, the tiled kernel
with the caller's tiles serves the rest."""

from __future__ import annotations

import torch

import kernels.lns as lns
import kernels.lns_variants as variants
from kernels.lns import lns_encode, lns_matmul, lns_matmul_ref
from kernels.lns_variants import SMALL_M_VARIANTS, VARIANTS, auto_variant
from tests.kernels.test_lns import assert_close_to_ref


def test_auto_table_is_the_h100_measurement():
    """The rows follow bench/results/lns_small_m.json: the fastest configuration at M = 1, 16, 64."""
    import json
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "results" / "lns_small_m.json"
    rows = [r for r in json.loads(path.read_text())["rows"] if "ms" in r]
    for m in (1, 16, 64):
        best = min((r for r in rows if r["M"] == m), key=lambda r: r["ms"])
        variant, block_n, block_k = auto_variant(m)
        assert (variant, block_n or best["block_n"], block_k or best["block_k"]) == (
            best["variant"], best["block_n"], best["block_k"])
    assert auto_variant(65) == ("tiled", None, None) == auto_variant(4096)
    assert SMALL_M_VARIANTS == VARIANTS[2:] and VARIANTS[:2] == ("tiled", "tiled_bits")


def test_auto_follows_the_table_by_m(monkeypatch):
    monkeypatch.setattr(variants, "AUTO_SMALL_M", ((1, "gemv", None, None), (16, "swap", 32, 64)))
    assert [auto_variant(m) for m in (1, 2, 16, 17)] == [
        ("gemv", None, None), ("swap", 32, 64), ("swap", 32, 64), ("tiled", None, None)]
    calls = []
    real = lns.lns_matmul_small
    monkeypatch.setattr(lns, "lns_matmul_small", lambda v, *a: calls.append((v, a[-2:])) or real(v, *a))
    torch.manual_seed(13)
    lw = lns_encode(torch.randn(40, 96) * 0.05, 8)
    for m in (1, 5, 17):
        x = torch.randn(m, 96, dtype=torch.float16)
        # the caller's tiles reach the tiled kernel only; a table row brings its own
        assert_close_to_ref(lns_matmul(x, lw, 16, 16, 16, backend="triton"), lns_matmul_ref(x, lw), torch.float16)
    assert calls == [("gemv", (None, None)), ("swap", (32, 64))]


def test_lns_bench_rows_name_the_kernel_auto_ran(monkeypatch):
    """kernels.json's lns rows time lns_matmul's default (auto): each row says which kernel and tiles that was."""
    from tests.kernels.test_lns import _bench_module

    monkeypatch.setattr(variants, "AUTO_SMALL_M", ((4, "swap", None, None),))
    rows = _bench_module().bench_lns(torch.device("cpu"), shapes=[(3, 32, 16), (20, 32, 16)], blocks=[(16, 16, 16)],
                                     bits_list=(8,))
    assert [(r["M"], r["variant"], r["block_n"]) for r in rows] == [(3, "swap", 64), (20, "tiled", 16)]
    assert rows[0]["k_slices"] == 1 and all(r["check_rel_err_vs_ref"] <= r["check_tol"] for r in rows)
