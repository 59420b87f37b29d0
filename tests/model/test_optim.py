"""Optimizer parameter groups: every parameter in exactly one group, weight decay only on matrices and embedding
cores, the per-kind learning rates, and that the trainer's AdamW uses them (a measured first step)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from model.lm import build_model
from model.optim import KINDS, kind_of, lr_multipliers, param_groups, tag
from tests.model.tiny import cfg


def _names_by_group(model, groups):
    ids = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {ids[id(p)] for p in g["params"]} for g in groups}


@pytest.mark.parametrize("changes", [{}, dict(htt_num_cores=3), dict(head="low_rank", head_rank=8)])
def test_every_parameter_in_exactly_one_group_with_the_right_kind(changes):
    m = build_model(cfg(**changes))
    groups = param_groups(m, 1e-3, 0.1)
    listed = [id(p) for g in groups for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in m.parameters())  # all, none twice
    names = _names_by_group(m, groups)
    assert all(n.startswith("embed.core") for n in names["embedding"])
    assert all(n.startswith("embed.theta") for n in names["phase"])
    assert len(names["phase"]) == (4 if changes.get("htt_num_cores") == 3 else 2)
    assert names["gain"] == {n for n, _ in m.named_parameters() if "norm" in n and n.endswith("weight")}
    assert names["decay"] == {f"blocks.{i}.mixer.decay_logit" for i in range(2)}
    assert "out_bias" in names["bias"] and all(n.endswith("bias") for n in names["bias"])
    assert all(p.dim() >= 2 for g in groups if g["name"] == "matrix" for p in g["params"])


def test_no_weight_decay_on_phases_gains_decays_biases():
    m = build_model(cfg())
    by_name = {g["name"]: g for g in param_groups(m, 1e-3, 0.1)}
    for kind in ("phase", "gain", "decay", "bias"):
        assert by_name[kind]["weight_decay"] == 0.0, kind
    for kind in ("matrix", "embedding"):
        assert by_name[kind]["weight_decay"] == 0.1, kind


def test_learning_rates_per_group_follow_the_width_rule():
    for d in (32, 64):
        m = build_model(cfg(d_model=d))
        by_name = {g["name"]: g["lr"] for g in param_groups(m, 2e-3, 0.1)}
        mult = lr_multipliers(d)
        assert by_name == pytest.approx({k: 2e-3 * mult[k] for k in by_name})
        # the rule: table cores at 8 sqrt(D) times the matrices' rate, everything else at the base rate
        assert by_name["embedding"] == pytest.approx(2e-3 * 8 * math.sqrt(d))
        for kind in ("matrix", "phase", "gain", "decay", "bias"):
            assert by_name[kind] == pytest.approx(2e-3), kind


def test_untagged_models_get_matrix_and_bias_groups_and_tags_are_checked():
    m = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    groups = param_groups(m, 1e-3, 0.1, d_model=4)
    assert [g["name"] for g in groups] == ["matrix", "bias"]
    assert [len(g["params"]) for g in groups] == [1, 3]
    emb = nn.Embedding(10, 4)
    tag(emb.weight, "embedding")
    assert kind_of(emb.weight) == "embedding"
    with pytest.raises(ValueError, match="not one of"):
        tag(emb.weight, "cores")
    assert set(KINDS) >= {g["name"] for g in param_groups(build_model(cfg()), 1e-3, 0.1)}


def test_trainer_adamw_uses_the_groups_and_a_first_step_moves_each_kind_by_its_rate():
    """Adam's first step moves every entry with a nonzero gradient by lr (m/sqrt(v) = sign(g)), so the measured
    step of each group is its rate: the cores 8 sqrt(D) = 45x the matrices at D = 32, the phases 1x."""
    from model.train import BETAS

    c = cfg(learning_rate=1e-3)
    m = build_model(c)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.AdamW(param_groups(m, c.learning_rate, 0.0), lr=c.learning_rate, betas=BETAS)
    ids = torch.randint(0, c.vocab_size, (2, c.n_seq), generator=torch.Generator().manual_seed(0))
    m(ids, ids).loss.backward()
    opt.step()
    step = {n: (p.detach() - before[n]).abs().max().item() for n, p in m.named_parameters()}
    assert step["embed.core1"] == pytest.approx(1e-3 * 8 * math.sqrt(32), rel=1e-3)
    assert step["embed.theta1"] == pytest.approx(1e-3, rel=1e-3)
    assert step["blocks.0.ffn.U1.weight"] == pytest.approx(1e-3, rel=1e-3)
    assert step["out_bias"] == pytest.approx(1e-3, rel=1e-3)
