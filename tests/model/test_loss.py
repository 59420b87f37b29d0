"""model/loss.py: the fused head + loss (`linear_cross_entropy`) gives the chunked path's loss and gradients, in fp32
and under bf16 autocast, with ignored targets and ragged chunks; and the models' fused_loss switch trains the same."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.config import Phase1Config
from model.dense import build_dense_model
from model.dense_config import DenseConfig
from model.fast import use_fused_loss
from model.lm import build_model
from model.loss import IGNORE_INDEX, linear_cross_entropy, softmax_xent_grad, softmax_xent_grad_functional


def problem(seed=0, B=3, L=7, D=16, V=50):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    w = torch.randn(V, D, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(V, generator=g, dtype=torch.float64)
    t = torch.randint(0, V, (B, L), generator=g)
    t[0, 2] = t[2, 6] = IGNORE_INDEX
    return h, w, b, t


@pytest.mark.parametrize("grad_fn", [softmax_xent_grad, softmax_xent_grad_functional], ids=["in_place", "functional"])
@pytest.mark.parametrize("chunk", [0, 1, 5, 21, 100])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_matches_plain_cross_entropy_in_float64(chunk, with_bias, grad_fn):
    h, w, b, t = problem()
    leaves = [x.clone().requires_grad_(True) for x in (h, w, b)]
    bias = leaves[2] if with_bias else None
    fused = linear_cross_entropy(leaves[0], leaves[1], bias, t, chunk, grad_fn)
    fused_grads = torch.autograd.grad(fused * 3.0, leaves, allow_unused=True)  # a scale: backward scales
    ref_leaves = [x.clone().requires_grad_(True) for x in (h, w, b)]

    def logits(x):
        out = x @ ref_leaves[1].t()
        return out + ref_leaves[2] if with_bias else out

    # the float64 reference (chunked_cross_entropy computes in fp32): plain cross_entropy over all positions
    lg = logits(ref_leaves[0]).reshape(-1, w.shape[0])
    ref = F.cross_entropy(lg, t.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum") / (t != IGNORE_INDEX).sum()
    ref_grads = torch.autograd.grad(ref * 3.0, ref_leaves, allow_unused=True)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-10)
    for name, f, r in zip(("h", "w", "b"), fused_grads, ref_grads, strict=True):
        if name == "b" and not with_bias:
            assert f is None
            continue
        torch.testing.assert_close(f, r, rtol=1e-9, atol=1e-10, msg=lambda m, name=name: f"{name}: {m}")
    assert fused_grads[0][0, 2].abs().max() == 0  # an ignored position gets no gradient


def test_all_ignored_gives_zero_loss_and_gradient():
    h, w, b, t = problem()
    t[:] = IGNORE_INDEX
    hh = h.clone().requires_grad_(True)
    loss = linear_cross_entropy(hh, w, b, t, 4)
    loss.backward()
    assert loss.item() == 0.0 and hh.grad.abs().max() == 0


def step(model, c, autocast):
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(0, c.vocab_size, (c.batch_size, c.n_seq + 1), generator=g)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(seq[:, :-1], seq[:, 1:])
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


TINY = dict(vocab_size=97, d_model=32, n_layers=2, n_seq=16, ffn_rank=4, ar_ssm_max_rank=8, ar_ssm_min_rank=2,
            htt_rank=4, batch_size=2, loss_chunk_size=5)  # fmt: skip


@pytest.mark.parametrize("kind", ["phase1", "phase1_3cores", "dense"])
def test_model_switch_gives_the_same_step(kind):
    """fp32: the fused step's loss and every gradient equal the chunked step's to rounding; bf16 autocast: its
    error against the fp32 step is at most 2x the chunked bf16 step's (plus 0.2% of the gradient's norm)."""
    if kind == "dense":
        c = DenseConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=2, n_seq=16, batch_size=2, loss_chunk_size=5)
        build = build_dense_model
    else:
        c = Phase1Config(**TINY, htt_num_cores=3 if kind == "phase1_3cores" else 2)
        build = build_model
    plain, fused = build(c).train(), build(c).train()
    use_fused_loss(fused)
    ref_out, ref = step(plain, c, autocast=False)
    out, grads = step(fused, c, autocast=False)
    assert out.logits is None and out.loss is not None
    torch.testing.assert_close(out.loss, ref_out.loss, rtol=1e-5, atol=1e-6)
    for name, r in ref.items():
        torch.testing.assert_close(grads[name], r, rtol=1e-4, atol=1e-6 * float(r.abs().max()) + 1e-8,
                                   msg=lambda m, name=name: f"{name}: {m}")  # fmt: skip
    bf_plain_out, bf_plain = step(plain, c, autocast=True)
    bf_out, bf_fused = step(fused, c, autocast=True)
    assert abs(bf_out.loss - ref_out.loss) <= 2 * abs(bf_plain_out.loss - ref_out.loss) + 2e-3 * abs(ref_out.loss)
    for name, r in ref.items():
        err_p, err_f = (float((gr[name] - r).norm()) for gr in (bf_plain, bf_fused))
        assert err_f <= 2 * err_p + 2e-3 * float(r.norm()), f"{name}: fused {err_f:.3g}, chunked {err_p:.3g}"


def test_low_rank_head_and_evaluation_keep_the_chunked_path():
    c = Phase1Config(**{**TINY, "head": "low_rank", "head_rank": 8})
    m = build_model(c).train()
    use_fused_loss(m)
    ids = torch.randint(0, 97, (2, 16))
    assert m(ids, ids).logits is None  # chunked (loss_chunk_size 5 < 16): no logits either way, but runs
    c0 = Phase1Config(**{**TINY, "loss_chunk_size": 0})
    m0 = build_model(c0).eval()
    use_fused_loss(m0)
    with torch.no_grad():
        assert m0(ids, ids).logits is not None  # no grad: the plain head, logits returned


def test_under_autocast_the_gemms_run_in_the_autocast_dtype_even_for_fp32_h():
    """A LayerNorm output is fp32 under autocast (the dense model's h): the fused loss must still run its GEMMs in
    bf16 like the chunked path's autocast matmul, i.e. give exactly what it gives on bf16 inputs without autocast."""
    h, w, _, t = problem()
    h, w = h.float(), w.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = linear_cross_entropy(h, w, None, t, 5)
    plain = linear_cross_entropy(h.bfloat16(), w.bfloat16(), None, t, 5)
    assert torch.equal(under, plain)
    assert not torch.equal(under, linear_cross_entropy(h, w, None, t, 5))  # fp32 GEMMs differ
