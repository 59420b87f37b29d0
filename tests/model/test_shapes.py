"""model/shapes.py: the torch-free formulas (which the VRAM estimator calls) against the real modules."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from model import shapes
from model.lm import build_model
from tests.model.tiny import cfg

CASES = {
    "default": dict(),
    "3cores-lowrank": dict(htt_num_cores=3, head="low_rank", head_rank=8),
    "no-phase": dict(htt_phase_encoding=False),
    "3cores-no-phase": dict(htt_num_cores=3, htt_phase_encoding=False),
    "no-gate": dict(ar_ssm_min_rank=8),  # every channel forced on: no gate MLP
    "odd-vocab": dict(vocab_size=101, d_model=30, n_layers=3),
}


@pytest.mark.parametrize("changes", CASES.values(), ids=CASES.keys())
def test_param_tensors_are_the_models_parameters_in_order(changes):
    c = cfg(**changes)
    m = build_model(c)
    assert shapes.param_tensors(c) == [p.numel() for p in m.parameters()]
    assert shapes.htt_param_tensors(c) == [p.numel() for p in m.embed.parameters()]
    assert shapes.block_param_tensors(c) == [p.numel() for p in m.blocks[0].parameters()]
    assert shapes.head_param_tensors(c)[0] == m.out_bias.numel()


@pytest.mark.parametrize("changes", CASES.values(), ids=CASES.keys())
def test_cast_elems_are_the_linear_and_conv_parameters(changes):
    c = cfg(**changes)
    m = build_model(c)
    cast = sum(p.numel() for mod in m.modules() if isinstance(mod, (nn.Linear, nn.Conv1d)) for p in mod.parameters())
    assert shapes.linear_weight_elems(c) == cast
    mixer = m.blocks[0].mixer
    mixer_cast = sum(
        p.numel() for mod in mixer.modules() if isinstance(mod, (nn.Linear, nn.Conv1d)) for p in mod.parameters()
    )
    assert shapes.ar_ssm_cast_elems(c) == mixer_cast


def test_table_chunks_are_whole_leading_digit_blocks():
    c = cfg(vocab_size=101, htt_num_cores=3)
    m = build_model(c)
    per_digit = shapes.rows_per_leading_digit(m.embed.v_factors)
    assert per_digit == m.embed.v_factors[1] * m.embed.v_factors[2] == m.embed.rows_per_leading_digit
    assert shapes.table_chunk_step(per_digit, chunk_rows=10) % per_digit == 0
    assert shapes.table_chunk_step(per_digit, chunk_rows=1) == per_digit  # never less than one block
    assert shapes.table_chunk_step(7, chunk_rows=50) == 49


def test_scan_tile_widths_match_the_kernel_tiles():
    from kernels.scan_launch import _tiles
    from kernels.scan_shapes import scan_tile_widths

    for L in (1, 5, 16, 17, 64, 100, 4096):
        for R in (1, 3, 16, 17, 33, 64):
            t = _tiles(L, R, torch.float32)
            assert scan_tile_widths(L, R) == (t.block_t, t.fwd_r, t.bwd_r), (L, R)


def test_shapes_imports_without_torch():
    code = "import sys, model.shapes, kernels.scan_shapes; print('torch' in sys.modules, 'triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
