"""The swapped-operand small-M kernel (kernels/lns_swap.py, variant "swap"): y^T = w @ x^T, stored transposed into
y, with and without split-K, against the torch reference in the Triton interpreter. The variant's odd-shape sweep
over M, code widths and dtypes is in test_lns_small.py with the other small-M variants.
"""

from __future__ import annotations

import pytest
import torch

from kernels.lns import lns_decode, lns_encode, lns_matmul, lns_matmul_ref
from kernels.lns_small import small_m_tiles
from tests.kernels.test_lns import assert_close_to_ref


@pytest.mark.parametrize("N, K, slices", [(40, 200, 2), (64, 512, 4), (200, 128, 1)])
def test_swap_split_and_unsplit_match_the_reference(N, K, slices):
    torch.manual_seed(11)
    x = torch.randn(5, K, dtype=torch.float16)
    lw = lns_encode(torch.randn(N, K) * 0.05, 8)
    bias = torch.randn(N)
    assert small_m_tiles("swap", 5, N, K)[3] == slices  # split over K (fp32 partials + reduction) or direct
    y = lns_matmul(x, lw, backend="triton", bias=bias, variant="swap")
    assert_close_to_ref(y, lns_matmul_ref(x, lw, bias), torch.float16)


def test_swap_writes_y_transposed_into_a_strided_output_layout():
    """y is [M, N] row-major while the kernel's tile is [BLOCK_N, BLOCK_M]: every (m, n) must land in its place."""
    torch.manual_seed(12)
    M, N, K = 3, 70, 64
    x = torch.zeros(M, K, dtype=torch.float16)
    x[torch.arange(M), torch.arange(M)] = 1.0  # y[m, n] = w[n, m]: any transposition error shows as a mismatch
    w = torch.randn(N, K) * 0.05
    lw = lns_encode(w, 8)
    y = lns_matmul(x, lw, backend="triton", variant="swap").double()
    want = lns_decode(lw, torch.float64)[:, :M].t()
    # two fp16 roundings (decoded magnitude, output) apart at most; a misplaced element would be off by O(1)
    assert ((y - want).abs() <= want.abs() * 2.0**-10).all()
