"""tuner.study.space: parameters (their values, membership, distributions), conditions, sampling and the grid."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tests.tuner.tiny import _DELETE, SS, mutate
from tuner.study.loader import spec_from_dict
from tuner.study.space import Param, SearchSpace, describe_param, holds, param_dict

RANK = Param("ar_ssm_max_rank", "int", low=8, high=30, step=8)  # 8, 16, 24 (30 is not reachable)
L1 = Param("ar_ssm_l1_regularization", "float", low=1e-4, high=1e-2, log=True)
LR = Param("learning_rate", "float", low=0.1, high=0.3, step=0.1)
GC = Param("use_gradient_checkpointing", "categorical", choices=(True, False))
CKPT = Param(
    "checkpoint_ar_ssm", "categorical", choices=(True, False), when=(("use_gradient_checkpointing", (False,)),)
)


def test_int_values_stop_at_the_last_step_below_high():
    assert RANK.top == 24
    assert RANK.values() == [8, 16, 24]
    assert RANK.values(limit=2) == [8, 24]  # too many values: the two ends
    assert Param("n", "int", low=1, high=4).values() == [1, 2, 3, 4]


def test_float_and_categorical_values():
    assert L1.values() == [1e-4, 1e-2] and L1.top == 1e-2
    assert GC.values() == [True, False]


@pytest.mark.parametrize(
    "param, value, inside",
    [
        (RANK, 16, True),
        (RANK, 12, False),  # between steps
        (RANK, 32, False),  # above high
        (RANK, 16.0, False),  # an int parameter takes ints only
        (RANK, True, False),  # bool is not a number here
        (L1, 5e-3, True),
        (L1, 1e-5, False),
        (L1, "0.001", False),
        (LR, 0.2, True),
        (LR, 0.25, False),  # off the float step
        (GC, False, True),
        (GC, 0, False),  # 0 == False, but not the same type
    ],
)
def test_contains(param, value, inside):
    assert param.contains(value) is inside


def test_distributions_match_the_parameter():
    assert Param("r", "int", low=8, high=32, step=8).distribution() == IntDistribution(8, 32, step=8)
    assert L1.distribution() == FloatDistribution(1e-4, 1e-2, log=True)
    assert GC.distribution() == CategoricalDistribution([True, False])


def test_a_categorical_has_no_range():
    with pytest.raises(ValueError, match="no range"):
        _ = GC.lo


def test_holds_compares_value_and_type():
    when = (("use_gradient_checkpointing", (False,)),)
    assert holds(when, {"use_gradient_checkpointing": False})
    assert not holds(when, {"use_gradient_checkpointing": True})
    assert not holds(when, {"use_gradient_checkpointing": 0})
    assert not holds(when, {})  # unknown yet: not active
    assert holds((), {})


def test_active_reads_fixed_values_and_chosen_ones():
    space = SearchSpace((GC, CKPT), base=())
    assert space.active({"use_gradient_checkpointing": True}) == [GC]
    assert space.active({"use_gradient_checkpointing": False}) == [GC, CKPT]
    fixed = SearchSpace((CKPT,), base=(("use_gradient_checkpointing", False),))
    assert fixed.active({}) == [CKPT]
    assert "checkpoint_ar_ssm" in fixed and fixed.get("nope") is None


def test_describe_and_dict_of_a_parameter():
    assert describe_param(RANK) == "8 .. 30 step 8"
    assert describe_param(L1) == "0.0001 .. 0.01 log"
    assert describe_param(GC) == "choices [true, false]"
    assert param_dict(RANK) == {"type": "int", "low": 8, "high": 30, "step": 8}
    assert param_dict(L1) == {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
    assert param_dict(CKPT) == {
        "type": "categorical",
        "choices": [True, False],
        "when": {"use_gradient_checkpointing": False},
    }


def test_suggest_follows_conditions(tiny_spec):
    spec = tiny_spec
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = {True: 0, False: 0}
    for _ in range(30):
        trial = study.ask()
        params = spec.space.suggest(trial)
        gc = params["use_gradient_checkpointing"]
        seen[gc] += 1
        assert ("checkpoint_ar_ssm" in params) == (gc is False)
        assert set(params) == set(trial.params)
        spec.build_config(params)  # every sampled point builds
        study.tell(trial, 1.0)
    assert seen[True] and seen[False]


def test_grid_sampler_space():
    d = mutate(
        sampler={"name": "grid"},
        **{
            f"{SS}__ar_ssm_l1_regularization": {"type": "float", "low": 0.001, "high": 0.003, "step": 0.001},
            f"{SS}__checkpoint_ar_ssm": _DELETE,
        },
    )
    spec = spec_from_dict(d)
    grid = spec.space.grid()
    assert grid["ar_ssm_max_rank"] == [8, 16, 24, 32] and len(grid["ar_ssm_l1_regularization"]) == 3


def test_grid_of_a_float_with_step():
    assert SearchSpace((LR,)).grid() == {"learning_rate": pytest.approx([0.1, 0.2, 0.3])}
