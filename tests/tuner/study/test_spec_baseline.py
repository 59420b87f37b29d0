"""The study file's `baseline:` key: `dense` or a mapping of DenseConfig overrides -> StudySpec.baseline (built by
dense_for from the study's fixed model), one-line errors naming the key and the fix, and a round trip through the
stored spec."""

from __future__ import annotations

import pytest

from model.dense_config import DenseConfig
from tests.tuner.tiny import mutate
from tuner.errors import SpecError
from tuner.study.loader import spec_from_dict


def test_absent_means_no_reference_and_no_key_in_the_stored_spec():
    spec = spec_from_dict(mutate(), check_paths=False)
    assert spec.baseline is None and "baseline" not in spec.to_dict()


def test_dense_copies_the_fixed_shape_with_the_dense_default_learning_rate():
    spec = spec_from_dict(mutate(baseline="dense"), check_paths=False)
    b = spec.baseline
    assert isinstance(b, DenseConfig)
    assert (b.vocab_size, b.d_model, b.n_layers, b.n_seq, b.n_heads) == (512, 64, 2, 64, 1)
    assert b.learning_rate == DenseConfig.learning_rate  # the study does not fix one


def test_a_fixed_learning_rate_is_shared_and_overrides_win():
    spec = spec_from_dict(mutate(model__learning_rate=2.0e-3, baseline="dense"), check_paths=False)
    assert spec.baseline is not None and spec.baseline.learning_rate == 2.0e-3
    spec = spec_from_dict(mutate(baseline={"kind": "dense", "n_heads": 8, "learning_rate": 1.0e-3}), check_paths=False)
    assert spec.baseline is not None and (spec.baseline.n_heads, spec.baseline.learning_rate) == (8, 1.0e-3)
    again = spec_from_dict(spec.to_dict(), check_paths=False)  # what a worker rebuilds from storage
    assert again.baseline == spec.baseline and again.to_dict() == spec.to_dict()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("dens", "baseline: 'dens' is not a baseline (did you mean 'dense'?); write `baseline: dense`"),
        ({"kind": "gpt"}, "baseline.kind: 'gpt' is not a baseline kind; use kind: dense"),
        ({"n_head": 8}, "baseline.n_head: not a DenseConfig field (did you mean 'n_heads'?); allowed: "),
        ({"n_heads": 7}, "baseline.n_heads: 7 does not divide d_model = 64"),
        ({"learning_rate": -1.0}, "baseline.learning_rate: -1.0 is out of range"),
        (3, "baseline: 3 is neither `dense` nor a mapping"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(value, message):
    with pytest.raises(SpecError) as e:
        spec_from_dict(mutate(baseline=value), where="s.yaml", check_paths=False)
    assert str(e.value).startswith(f"s.yaml: {message}") and "\n" not in str(e.value)
