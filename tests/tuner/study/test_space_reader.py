"""tuner.study.space_reader: `search_space:` into a SearchSpace (types, order, fixed bases), the grid check and the
impossible-combination check. The one-line messages of each bad key are in test_spec.py's BAD table (through the
loader); here the reader is driven directly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.errors import SpecError
from tuner.study.loader import spec_from_dict
from tuner.study.space_reader import SpaceReader

MODEL = {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_seq": 64}


@pytest.fixture
def r() -> SpaceReader:
    return SpaceReader("study.yaml", Path("."), check_paths=False)


def test_params_are_typed_and_floats_become_floats(r):
    space = r.space(
        {
            "ar_ssm_max_rank": {"type": "int", "low": 8, "high": 32, "step": 8},
            "ar_ssm_l1_regularization": {"type": "float", "low": 1, "high": 2},
        },
        MODEL,
    )
    rank, l1 = space.params
    assert (rank.type, rank.low, rank.high, rank.step) == ("int", 8, 32, 8)
    assert (l1.type, l1.low, l1.high) == ("float", 1.0, 2.0) and isinstance(l1.low, float)


def test_conditions_sorted_after_their_parents(tiny_spec_dict):
    d = tiny_spec_dict
    d["search_space"] = {
        "checkpoint_ar_ssm": d["search_space"]["checkpoint_ar_ssm"],
        "use_gradient_checkpointing": d["search_space"]["use_gradient_checkpointing"],
    }
    spec = spec_from_dict(d)
    assert spec.space.names == ("use_gradient_checkpointing", "checkpoint_ar_ssm")


def test_a_condition_on_a_fixed_field_reads_model_then_the_default(r):
    when_off = {"type": "categorical", "choices": [True, False], "when": {"use_gradient_checkpointing": False}}
    fixed = r.space({"checkpoint_ar_ssm": when_off}, {**MODEL, "use_gradient_checkpointing": False})
    assert fixed.base == (("use_gradient_checkpointing", False),)
    # Phase1Config's default (True) makes the condition dead: refused, naming where the value comes from.
    with pytest.raises(SpecError, match=r"when\.use_gradient_checkpointing: never holds \(default"):
        r.space({"checkpoint_ar_ssm": when_off}, MODEL)


@pytest.mark.parametrize(
    "space, message",
    [
        ({"target_vram_gb": {"type": "int", "low": 4, "high": 8}}, "is set from vram_ceiling_gib"),
        (
            {
                "use_gradient_checkpointing": {
                    "type": "categorical",
                    "choices": [True],
                    "when": {"use_gradient_checkpointing": True},
                }
            },
            "cannot depend on itself",
        ),
        ({"ar_ssm_max_rank": {"type": "int", "low": 8, "high": 32, "when": {}}}, "is not a mapping of conditions"),
        ({"ar_ssm_max_rank": {"type": "int", "low": 8, "high": 32, "when": {"n_layers": []}}}, "empty list of values"),
        (
            {"ar_ssm_l1_regularization": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True, "step": 1e-3}},
            "log: true",
        ),
        ({"ar_ssm_max_rank": {"type": "categorical", "choices": [8], "low": 1}}, "not used by a categorical"),
        ({"ar_ssm_max_rank": {"type": "int", "low": 8, "high": 32, "choices": [8]}}, "not used by a int"),
        ([1, 2], "expected a mapping of parameters"),
    ],
)
def test_bad_space_is_one_line(r, space, message):
    with pytest.raises(SpecError, match=message) as info:
        r.space(space, MODEL)
    assert str(info.value).startswith("study.yaml: ") and "\n" not in str(info.value)


def test_check_grid_refuses_conditions_and_unstepped_floats(r):
    cond = r.space(
        {
            "use_gradient_checkpointing": {"type": "categorical", "choices": [True, False]},
            "checkpoint_ar_ssm": {
                "type": "categorical",
                "choices": [True, False],
                "when": {"use_gradient_checkpointing": False},
            },
        },
        MODEL,
    )
    with pytest.raises(SpecError, match="grid sampler cannot use conditions"):
        r.check_grid(cond)
    with pytest.raises(SpecError, match="a float without step has no grid"):
        r.check_grid(r.space({"ar_ssm_l1_regularization": {"type": "float", "low": 0.1, "high": 0.2}}, MODEL))
    r.check_grid(r.space({"ar_ssm_max_rank": {"type": "int", "low": 8, "high": 32}}, MODEL))  # fine


def test_check_space_finds_a_bad_single_value_and_a_bad_corner(r):
    # each value alone: n_layers 0 is never valid
    single = r.space(
        {"n_layers": {"type": "int", "low": 0, "high": 2}}, {k: v for k, v in MODEL.items() if k != "n_layers"}
    )
    with pytest.raises(SpecError, match=r"search_space\.n_layers: value 0 is invalid"):
        r.check_space(single, {k: v for k, v in MODEL.items() if k != "n_layers"}, 8)
    # two ranges each fine alone, but min_rank 16 > max_rank 8 at a corner
    corner = r.space(
        {
            "ar_ssm_max_rank": {"type": "int", "low": 8, "high": 32},
            "ar_ssm_min_rank": {"type": "int", "low": 2, "high": 16},
        },
        MODEL,
    )
    with pytest.raises(SpecError, match="the combination .* is invalid"):
        r.check_space(corner, MODEL, 8)
    ok = r.space(
        {
            "ar_ssm_max_rank": {"type": "int", "low": 16, "high": 32},
            "ar_ssm_min_rank": {"type": "int", "low": 2, "high": 16},
        },
        MODEL,
    )
    r.check_space(ok, MODEL, 8)
