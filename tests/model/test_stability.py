"""Stability monitor: every check fires when crossed and stays quiet on a fresh model; Schatten norms exact."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from model.ar_ssm import ARSSM
from model.config import Phase1Config
from model.errors import NumericalInstabilityError
from model.lm import build_model
from model.stability import (
    StabilityMonitor,
    StabilityWarning,
    det_condition,
    schatten_norms,
)


def cfg(**kw) -> Phase1Config:
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_seq=17, ffn_rank=4, ar_ssm_max_rank=8,
                ar_ssm_min_rank=2, htt_rank=4, loss_chunk_size=0, use_gradient_checkpointing=False, batch_size=2)
    base.update(kw)
    return Phase1Config(**base)


def trained_step(model, c):
    seq = torch.randint(0, c.vocab_size, (c.batch_size, c.n_seq + 1), generator=torch.Generator().manual_seed(0))
    out = model(seq[:, :-1], seq[:, 1:])
    out.loss.backward()
    return out


# --- quiet on healthy models ---------------------------------------------------------------------

def test_fresh_tiny_model_passes_every_check():
    c = cfg()
    m = build_model(c)
    mon = StabilityMonitor(c)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = trained_step(m, c)
        mon.check_finite(out.loss, 0)
        norm = mon.clip_gradients(m)
        got = mon.check(m, 0)
    assert got["det_min"] > c.stability_threshold
    assert got["s1_max"] < c.schatten_s1_bound and got["s2_max"] < c.schatten_s2_bound
    assert 0 < norm < c.gradient_norm_threshold and mon.clip_fraction == 0.0


@pytest.mark.parametrize("preset_rank", [(16, 4), (32, 4), (64, 8)], ids=["8gb", "10gb", "24gb"])
def test_fresh_full_size_mixer_is_healthy_under_default_bounds(preset_rank):
    """D = 1024 and the presets' ranks: det ~ 0.022 >> 1e-6, Schatten norms well inside 100 / 50."""
    r, m_ = preset_rank
    mixer = ARSSM(Phase1Config(ar_ssm_max_rank=r, ar_ssm_min_rank=m_))
    det = det_condition(mixer)
    s1, s2 = schatten_norms(*mixer.mixing_factors())  # before any forward: mean g = 1, the upper bound
    assert 1e-3 < det < 1 and s1 < 100 / 4 and s2 < 50 / 4, (det, s1, s2)


# --- each check fires ----------------------------------------------------------------------------

def test_det_fires_when_decay_is_pushed_to_one():
    c = cfg()
    m = build_model(c)
    mon = StabilityMonitor(c)
    assert mon.check(m, 0)["det_min"] > 1e-3
    with torch.no_grad():
        m.blocks[1].mixer.decay_logit.add_(18.0)  # every 1 - a_k shrinks by e^18 ~ 6.6e7
    with pytest.raises(NumericalInstabilityError) as err:
        mon.check(m, 10)
    d = err.value.diagnostics
    assert d["check"] == "det" and d["layer"] == 1 and d["step"] == 10 and d["value"] < 1e-6
    assert d["checks"] == ["det"]


def test_det_threshold_keeps_its_meaning():
    """Smaller threshold = allow closer to an undamped integrator: the same model passes at 1e-7, fails at 1e-5."""
    m = build_model(cfg())
    with torch.no_grad():
        for blk in m.blocks:  # every channel at 1 - a = 1e-6
            blk.mixer.decay_logit.fill_(math.log((1 - 1e-6) / 1e-6))
    assert det_condition(m.blocks[0].mixer) == pytest.approx(1e-6, rel=1e-4)
    StabilityMonitor(cfg(stability_threshold=1e-7)).check(m, 0)
    with pytest.raises(NumericalInstabilityError):
        StabilityMonitor(cfg(stability_threshold=1e-5)).check(m, 0)


def _identity_mixing(c: Phase1Config, channels: int, scale: float):
    """A model whose layer-0 operator U diag(g) W_o has `channels` singular values equal to `scale`."""
    m = build_model(c)
    mixer = m.blocks[0].mixer
    with torch.no_grad():
        mixer.U.weight.zero_()
        mixer.W_o.weight.zero_()
        for k in range(channels):
            mixer.U.weight[k, k] = scale  # U [D, r] = weight^T; all gates are 1 (min_rank = max_rank)
            mixer.W_o.weight[k, k] = 1.0
    return m


def test_schatten_s1_fires_alone():
    c = cfg(ar_ssm_max_rank=16, ar_ssm_min_rank=16)
    m = _identity_mixing(c, channels=16, scale=8.0)  # S1 = 128 > 100, S2 = 32 < 50
    with pytest.raises(NumericalInstabilityError) as err:
        StabilityMonitor(c).check(m, 0)
    assert err.value.diagnostics["checks"] == ["schatten_s1"]
    assert err.value.diagnostics["value"] == pytest.approx(128.0)


def test_schatten_s2_fires_alone():
    c = cfg(ar_ssm_max_rank=16, ar_ssm_min_rank=16)
    m = _identity_mixing(c, channels=1, scale=75.0)  # rank 1: S1 = S2 = 75; S1 < 100, S2 > 50
    with pytest.raises(NumericalInstabilityError) as err:
        StabilityMonitor(c).check(m, 0)
    assert err.value.diagnostics["checks"] == ["schatten_s2"]
    assert err.value.diagnostics["s2_max"] == pytest.approx(75.0)


def test_warn_action_warns_instead_of_raising():
    c = cfg(ar_ssm_max_rank=16, ar_ssm_min_rank=16, stability_action="warn")
    m = _identity_mixing(c, channels=16, scale=20.0)
    with pytest.warns(StabilityWarning, match="schatten_s1 320 above bound 100"):
        got = StabilityMonitor(c).check(m, 0)
    assert got["s2_max"] == pytest.approx(80.0)


def test_disabled_skips_det_schatten_but_not_non_finite():
    c = cfg(stability_monitoring_enabled=False, ar_ssm_max_rank=16, ar_ssm_min_rank=16)
    m = _identity_mixing(c, channels=16, scale=20.0)
    mon = StabilityMonitor(c)
    assert mon.check(m, 0) == {}
    with pytest.raises(NumericalInstabilityError):
        mon.check_finite(torch.tensor(float("nan")), 3)


def test_check_every():
    c = cfg(stability_check_every=5)
    m = build_model(c)
    mon = StabilityMonitor(c)
    assert mon.check(m, 3) == {} and mon.check(m, 5) != {} and mon.check(m, 7, force=True) != {}


def test_gradient_clipping_fires_and_counts():
    c = cfg(gradient_norm_threshold=1e-3)
    m = build_model(c)
    mon = StabilityMonitor(c)
    trained_step(m, c)
    norm = mon.clip_gradients(m)
    after = torch.norm(torch.stack([p.grad.norm() for p in m.parameters()])).item()
    assert norm > 1e-3 and after == pytest.approx(1e-3, rel=1e-3)
    assert mon.n_clipped == 1 and mon.clip_fraction == 1.0
    loose = StabilityMonitor(cfg(gradient_norm_threshold=100.0))
    loose.clip_gradients(m)  # now 1e-3 < 100: not clipped
    assert loose.clip_fraction == 0.0


def test_non_finite_gradient_raises():
    c = cfg()
    m = build_model(c)
    trained_step(m, c)
    with torch.no_grad():
        m.blocks[0].ffn.U1.weight.grad[0, 0] = float("inf")
    with pytest.raises(NumericalInstabilityError, match="gradient norm"):
        StabilityMonitor(c).clip_gradients(m)
    assert math.isinf(StabilityMonitor(c).clip_gradients(m, allow_nonfinite=True))
    assert math.isinf(m.blocks[0].ffn.U1.weight.grad[0, 0]) and torch.isfinite(m.blocks[0].ffn.V1.weight.grad).all()


def test_non_finite_loss_from_a_real_forward_raises_with_diagnostics():
    c = cfg()
    m = build_model(c)
    mon = StabilityMonitor(c)
    mon.check(m, 0)
    with torch.no_grad():
        m.blocks[0].ffn.V2.weight[0, 0] = float("inf")
    seq = torch.randint(0, 97, (2, 18))
    loss = m(seq[:, :-1], seq[:, 1:]).loss
    with pytest.raises(NumericalInstabilityError) as err:
        mon.check_finite(loss, 42)
    assert err.value.diagnostics["check"] == "non_finite_loss" and err.value.diagnostics["step"] == 42
    assert "det_min" in err.value.diagnostics  # the last measurement travels with it
    with pytest.raises(NumericalInstabilityError) as err:
        mon.check(m, 43)
    assert err.value.diagnostics["parameter"] == "blocks.0.ffn.V2.weight"


# --- Schatten norms are exact --------------------------------------------------------------------

@pytest.mark.parametrize("d,r", [(32, 8), (48, 48), (20, 31)])
def test_schatten_from_gram_matrices_equals_svd_of_explicit_matrix(d, r):
    g = torch.Generator().manual_seed(d + r)
    u, w = torch.randn(d, r, generator=g), torch.randn(r, d, generator=g)
    gate = torch.rand(r, generator=g)
    s1, s2 = schatten_norms(u, gate, w)
    sv = torch.linalg.svdvals((u.double() * gate.double()) @ w.double())
    assert s1 == pytest.approx(sv.sum().item(), rel=1e-9)
    assert s2 == pytest.approx(sv.pow(2).sum().sqrt().item(), rel=1e-9)


def test_schatten_uses_the_last_forward_gate_means():
    c = cfg()
    m = build_model(c)
    trained_step(m, c)
    s1s, s2s = [], []
    for blk in m.blocks:
        mixer = blk.mixer
        u, gm, w = mixer.mixing_factors()
        assert gm.shape == (8,) and torch.equal(gm[:2], torch.ones(2)) and (gm[2:] < 1).all()
        explicit = (mixer.U.weight.t().double() * gm.double()) @ mixer.W_o.weight.t().double()  # [D, D]
        sv = torch.linalg.svdvals(explicit)
        s1s.append(sv.sum().item())
        s2s.append(sv.pow(2).sum().sqrt().item())
    got = StabilityMonitor(c).measure(m)
    assert got["s1_max"] == pytest.approx(max(s1s), rel=1e-9) and got["s2_max"] == pytest.approx(max(s2s), rel=1e-9)
