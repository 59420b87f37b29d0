"""AR-SSM mixer: what it computes, causality, the gate floor, each setting's effect, parameter formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.scan import gated_scan_ref
from model.ar_ssm import ARSSM, ar_ssm_layer_param_count, ar_ssm_param_count
from tests.model.tiny import cfg, n_params


def reference_forward(m: ARSSM, x: torch.Tensor) -> torch.Tensor:
    """y = conv_causal(x) + (g v h) W_o, written out with the plain scan reference and an explicit conv."""
    g = torch.sigmoid(m.gate(x)) if m.gate is not None else x.new_zeros(*x.shape[:-1], 0)
    g = torch.cat([torch.ones(*x.shape[:-1], m.min_rank), g], -1)
    u, v = x @ m.U.weight.t(), x @ m.V.weight.t()
    y_scan = gated_scan_ref(u, g, v, torch.sigmoid(m.decay_logit))
    w = m.conv.weight[:, 0, :]  # [D, 3]; tap 2 is the current position
    xp = F.pad(x, (0, 0, 2, 0))  # [B, L + 2, D], zeros before the start
    local = m.conv.bias + w[:, 0] * xp[:, :-2] + w[:, 1] * xp[:, 1:-1] + w[:, 2] * xp[:, 2:]
    return local + y_scan @ m.W_o.weight.t()


@pytest.mark.parametrize("min_rank", [2, 8])
def test_forward_matches_written_math(min_rank):
    torch.manual_seed(0)
    m = ARSSM(cfg(ar_ssm_min_rank=min_rank))
    x = torch.randn(2, 13, 32)
    y, gate_l1, eff_rank, sparsity = m(x)
    torch.testing.assert_close(y, reference_forward(m, x), rtol=1e-5, atol=1e-5)


def test_causal_perturbing_future_inputs():
    torch.manual_seed(0)
    m = ARSSM(cfg())
    x = torch.randn(2, 17, 32)
    for t in (0, 5, 16):
        x2 = x.clone()
        x2[:, t:] += torch.randn_like(x2[:, t:])
        y1, y2 = m(x)[0], m(x2)[0]
        assert torch.equal(y1[:, :t], y2[:, :t]), t
        assert (y1[:, t:] - y2[:, t:]).abs().max() > 1e-3


def test_gate_floor_and_min_rank_changes_output():
    """Channels < min_rank are exactly 1; raising min_rank forces more channels on and changes y."""
    torch.manual_seed(0)
    low = ARSSM(cfg(ar_ssm_min_rank=2))
    high = ARSSM(cfg(ar_ssm_min_rank=5))
    state = dict(low.state_dict())
    # the gate MLP's last layer of `high` predicts channels 5.., i.e. rows 3.. of `low`'s
    state["gate.2.weight"], state["gate.2.bias"] = state["gate.2.weight"][3:], state["gate.2.bias"][3:]
    high.load_state_dict(state)
    x = torch.randn(2, 11, 32)
    g_low, g_high = low.gates(x), high.gates(x)
    assert torch.equal(g_high[..., :5], torch.ones_like(g_high[..., :5]))
    assert torch.equal(g_high[..., 5:], g_low[..., 5:])
    assert (g_low[..., 2:5] < 0.999).all()
    assert (low(x)[0] - high(x)[0]).abs().max() > 1e-4
    _, _, eff, _ = high(x)
    assert 5 <= eff.item() <= 8
    torch.testing.assert_close(eff, (g_high.mean((0, 1)) >= 0.1).sum().float())


def test_diagnostics_come_from_the_forward_gates():
    torch.manual_seed(0)
    m = ARSSM(cfg(ar_ssm_max_rank=16, ar_ssm_min_rank=2))
    with torch.no_grad():
        m.gate[2].bias[:7] = -6.0  # 7 learned channels nearly off -> sparsity ~ 7/16
    x = torch.randn(3, 10, 32)
    y, gate_l1, eff_rank, sparsity = m(x)
    g = m.gates(x)
    # L1 term: the sum over the 14 learned channels (forced ones left out) of each channel's mean gate
    torch.testing.assert_close(gate_l1, g[..., 2:].mean((0, 1)).sum())
    # channels in use: mean gate over the 30 positions >= 0.1 -> the 7 switched-off ones are not counted
    torch.testing.assert_close(eff_rank, torch.tensor(16.0 - 7.0))
    torch.testing.assert_close(sparsity, (g < 0.1).float().mean())
    assert 0.3 < sparsity.item() < 0.5
    torch.testing.assert_close(m.last_gate_mean, g.mean((0, 1)))
    assert gate_l1.requires_grad and not eff_rank.requires_grad


def test_effective_rank_counts_channels_in_use_within_min_and_max_rank():
    """All learned channels off -> min_rank; all on -> r_max; one channel at 0.05 on average -> not in use."""
    torch.manual_seed(0)
    m = ARSSM(cfg(ar_ssm_max_rank=8, ar_ssm_min_rank=3))
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        m.gate[2].weight.zero_()
        m.gate[2].bias.fill_(-8.0)
    assert m(x)[2].item() == 3.0
    with torch.no_grad():
        m.gate[2].bias.fill_(8.0)
    assert m(x)[2].item() == 8.0
    with torch.no_grad():
        m.gate[2].bias[0] = torch.logit(torch.tensor(0.05))  # channel 3: gate 0.05 everywhere
        m.gate[2].bias[1] = torch.logit(torch.tensor(0.15))  # channel 4: gate 0.15 everywhere, in use
    assert m(x)[2].item() == 7.0


def test_gate_l1_is_a_channel_sum_independent_of_max_rank():
    """Same gates per channel, twice the channels -> twice the L1 term (a mean over channels would stay put)."""
    for r in (8, 16):
        m = ARSSM(cfg(ar_ssm_max_rank=r, ar_ssm_min_rank=2))
        with torch.no_grad():
            m.gate[2].weight.zero_()
            m.gate[2].bias.fill_(0.0)  # every learned gate exactly 0.5
        assert m(torch.randn(2, 5, 32))[1].item() == pytest.approx(0.5 * (r - 2))


def test_decay_in_unit_interval_and_one_minus_exact():
    m = ARSSM(cfg(ar_ssm_max_rank=16))
    a = m.decay()
    assert ((a > 0) & (a < 1)).all()
    torch.testing.assert_close(m.one_minus_decay(), 1 - a)
    with torch.no_grad():
        m.decay_logit.fill_(25.0)  # a rounds to 1.0 in fp32, 1 - a must not
    assert (m.decay() == 1).all() and (m.one_minus_decay() > 0).all()


@pytest.mark.parametrize("change", [dict(ar_ssm_max_rank=16), dict(ar_ssm_min_rank=4),
                                    dict(ar_ssm_gate_hidden_dim=20), dict(ar_ssm_min_rank=8)],
                         ids=["max_rank", "min_rank", "gate_hidden_dim", "min_rank=max_rank"])
def test_settings_change_param_count_as_the_formula_predicts(change):
    base, other = cfg(), cfg(**change)
    assert n_params(ARSSM(base)) == ar_ssm_layer_param_count(base)
    assert n_params(ARSSM(other)) == ar_ssm_layer_param_count(other)
    assert ar_ssm_layer_param_count(other) != ar_ssm_layer_param_count(base)
    assert ar_ssm_param_count(other) == other.n_layers * ar_ssm_layer_param_count(other)


def test_gate_hidden_dim_default_and_explicit_are_built():
    assert ARSSM(cfg()).gate[0].out_features == 8  # d_model // 4
    assert ARSSM(cfg(ar_ssm_gate_hidden_dim=20)).gate[0].out_features == 20


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    m = ARSSM(cfg())
    y, gate_l1, _, _ = m(torch.randn(2, 9, 32))
    (y.pow(2).mean() + gate_l1).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_fused_flag_off_and_on_agree_on_cpu():
    """On CPU "fused on" runs the torch backend (no CUDA); both flags must give the same function."""
    torch.manual_seed(0)
    on = ARSSM(cfg(ar_ssm_use_fused_scan=True))
    off = ARSSM(cfg(ar_ssm_use_fused_scan=False))
    off.load_state_dict(on.state_dict())
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(on(x)[0], off(x)[0])


def test_works_under_cpu_autocast_bf16():
    torch.manual_seed(0)
    m = ARSSM(cfg())
    x = torch.randn(2, 9, 32)
    ref = m(x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, gate_l1, _, _ = m(x)
        (y.float().pow(2).mean() + gate_l1).backward()
    assert torch.isfinite(y).all() and all(p.grad is not None for p in m.parameters())
    torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.05)
