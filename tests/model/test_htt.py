"""HTT embedding: the formula's parameter count, the contraction it claims, init scale, phase that matters."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from model.config import Phase1Config
from model.htt import HTTEmbedding, factorize, htt_param_count
from tests.model.tiny import cfg, n_params


def explicit_table(e: HTTEmbedding) -> torch.Tensor:
    """The full [V, D] table by the written formula, index by index (float64), independent of `rows`."""
    vs, V, D = e.v_factors, e.vocab_size, e.d_model
    if e.num_cores == 2:
        g1, g2 = e.core1.double(), e.core2.double()  # [v1, d1, r], [v2, r, d2]
        c = (torch.cos(e.theta1.double()[:, None, :] + e.theta2.double()[None, :, :]) if e.phase
             else torch.ones(vs[0], vs[1], e.rank, dtype=torch.float64))  # [v1, v2, r]
        t = torch.einsum("xyr,xar,yrb->xyab", c, g1, g2)  # [v1, v2, d1, d2]
    else:
        g1, g2, g3 = e.core1.double(), e.core2.double(), e.core3.double()
        if e.phase:
            c12 = torch.cos(e.theta1.double()[:, None, :] + e.theta2l.double()[None, :, :])  # [v1, v2, r]
            c23 = torch.cos(e.theta2r.double()[:, None, :] + e.theta3.double()[None, :, :])  # [v2, v3, r]
        else:
            c12 = torch.ones(vs[0], vs[1], e.rank, dtype=torch.float64)
            c23 = torch.ones(vs[1], vs[2], e.rank, dtype=torch.float64)
        t = torch.einsum("xyp,yzq,xap,ypbq,zqc->xyzabc", c12, c23, g1, g2, g3)
    return t.reshape(math.prod(vs), -1)[:V, :D]


@pytest.mark.parametrize("cores,phase,rank", list(itertools.product([2, 3], [True, False], [2, 5])))
def test_param_count_formula_matches_module(cores, phase, rank):
    c = cfg(htt_num_cores=cores, htt_phase_encoding=phase, htt_rank=rank)
    assert n_params(HTTEmbedding(c)) == htt_param_count(c)


def test_rank_and_cores_change_param_count_as_predicted():
    base = cfg(htt_rank=4)
    for change in (dict(htt_rank=8), dict(htt_num_cores=3)):
        other = base.replace(**change)
        measured = n_params(HTTEmbedding(other)) - n_params(HTTEmbedding(base))
        assert measured == htt_param_count(other) - htt_param_count(base) != 0, change


def test_gpt2_size_is_under_two_percent_of_dense():
    c = Phase1Config(vocab_size=50257, d_model=1024, htt_rank=16, htt_num_cores=2)
    e = HTTEmbedding(c)
    dense = 50257 * 1024
    assert e.v_factors == (225, 224) and e.d_factors == (32, 32)
    assert n_params(e) == htt_param_count(c) == 16 * (225 * 32 + 224 * 32) + 16 * (225 + 224)
    assert n_params(e) <= 0.02 * dense  # 237,072 = 0.46% of 51.5 M
    out = e(torch.tensor([[0, 50256, 12345]]))
    assert out.shape == (1, 3, 1024) and torch.isfinite(out).all()


@pytest.mark.parametrize("n,k", [(97, 2), (50257, 2), (32, 2), (37, 2), (97, 3), (50257, 3), (1024, 3), (8, 3)])
def test_factorize_covers_n(n, k):
    f = factorize(n, k)
    assert len(f) == k and math.prod(f) >= n
    assert math.prod(f) < n * (1 + 2.0 / min(f)) + 1  # near-balanced: little cropped away


@pytest.mark.parametrize("cores,phase", list(itertools.product([2, 3], [True, False])))
def test_rows_match_explicit_contraction(cores, phase):
    e = HTTEmbedding(cfg(htt_num_cores=cores, htt_phase_encoding=phase, d_model=37))  # 37: cropped columns
    ids = torch.arange(97)
    with torch.no_grad():
        got = e(ids[None]).squeeze(0).double()
        torch.testing.assert_close(got, explicit_table(e), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(e.table(10, 50).double(), explicit_table(e)[10:50], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cores,phase", list(itertools.product([2, 3], [True, False])))
def test_init_norm_close_to_dense_embedding(cores, phase):
    torch.manual_seed(0)
    V, D = 4096, 64
    e = HTTEmbedding(cfg(vocab_size=V, d_model=D, htt_rank=8, htt_num_cores=cores, htt_phase_encoding=phase))
    dense = torch.nn.Embedding(V, D)
    with torch.no_grad():
        ours = e.table().norm(dim=-1).pow(2).mean().sqrt()
        ref = dense.weight.norm(dim=-1).pow(2).mean().sqrt()  # ~ sqrt(D)
    assert 0.75 < (ours / ref).item() < 1.33, (ours.item(), ref.item())


def test_phase_changes_output_and_receives_gradient():
    e = HTTEmbedding(cfg(htt_phase_encoding=True))
    ids = torch.randint(0, 97, (2, 9))
    with_phase = e(ids)
    e.phase = False  # same cores, phase dropped
    without = e(ids)
    e.phase = True
    assert (with_phase - without).abs().max() > 1e-2
    (with_phase.pow(2).sum()).backward()
    for name in ("theta1", "theta2"):
        grad = getattr(e, name).grad
        assert grad is not None and grad.abs().max() > 0, name


def test_phase_receives_gradient_with_three_cores():
    e = HTTEmbedding(cfg(htt_phase_encoding=True, htt_num_cores=3))
    e(torch.randint(0, 97, (2, 9))).pow(2).sum().backward()
    for name in ("theta1", "theta2l", "theta2r", "theta3"):
        assert getattr(e, name).grad.abs().max() > 0, name


def test_phase_cannot_be_folded_into_the_cores():
    """Without phase the (v1*d1) x (v2*d2) unfolding has rank <= r; the digit-coupling phase raises it to 2r.

    A per-rank scalar phase (the prototype's) leaves the rank at r: it can be folded into a core.
    """
    c = cfg(htt_rank=3, vocab_size=100, d_model=36)  # v = (10, 10), d = (6, 6): exact, nothing cropped
    e = HTTEmbedding(c)
    v1, v2 = e.v_factors
    d1, d2 = e.d_factors

    def unfolding_rank() -> int:
        with torch.no_grad():
            t = explicit_table(e).reshape(v1, v2, d1, d2).permute(0, 2, 1, 3).reshape(v1 * d1, v2 * d2)
        return int(torch.linalg.matrix_rank(t))

    assert unfolding_rank() == 2 * c.htt_rank
    e.phase = False
    assert unfolding_rank() == c.htt_rank
    e.phase = True
    with torch.no_grad():  # a phase that depends on the rank index only: foldable
        e.theta1.copy_(torch.linspace(0, 2, c.htt_rank).expand(v1, -1))
        e.theta2.zero_()
    assert unfolding_rank() == c.htt_rank


def test_works_under_cpu_autocast_bf16():
    e = HTTEmbedding(cfg(htt_num_cores=3))
    ids = torch.randint(0, 97, (2, 9))
    ref = e(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = e(ids)
        out.float().sum().backward()
    assert all(p.dtype == torch.float32 for p in e.parameters())
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.1)
