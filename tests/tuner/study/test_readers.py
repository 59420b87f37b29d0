"""tuner.study.readers: typed readers of YAML values; every failure is one line `FILE: key: problem; fix`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from model.config import ConfigError
from tuner.errors import SpecError
from tuner.study.readers import Readers, did_you_mean, fmt_value, yaml_problem


@pytest.fixture
def r() -> Readers:
    return Readers("study.yaml", Path("."), check_paths=False)


def test_fail_is_a_spec_error_naming_file_key_problem_and_fix(r):
    assert str(r.fail("budget.train_tokens", "missing", "add it")) == "study.yaml: budget.train_tokens: missing; add it"
    assert str(r.fail("", "empty file", "write a study")) == "study.yaml: empty file; write a study"
    assert isinstance(r.fail("k", "p", "f"), SpecError)


def test_did_you_mean():
    assert did_you_mean("n_trails", ["n_trials", "name"]) == " (did you mean 'n_trials'?)"
    assert did_you_mean("zzz", ["n_trials"]) == ""


def test_fmt_value_quotes_strings_and_flows_the_rest():
    assert fmt_value("tpe") == "'tpe'"
    assert fmt_value([1, True, None]) == "[1, true, null]"
    assert fmt_value({"a": 1}) == "{a: 1}"
    assert fmt_value(3) == "3"


def test_yaml_problem_names_line_and_column():
    with pytest.raises(yaml.YAMLError) as info:
        yaml.safe_load("a: 1\nb: [1, 2\n")
    text = yaml_problem(info.value)
    assert text.startswith("line ") and ", column " in text and "invalid YAML (" in text and "\n" not in text


def test_mapping_rejects_unknown_keys_with_a_suggestion(r):
    assert r.mapping({"low": 1}, "search_space.x", ["low", "high"]) == {"low": 1}
    with pytest.raises(SpecError, match=r"search_space\.x\.hgih: unknown key \(did you mean 'high'\?\); allowed"):
        r.mapping({"hgih": 1}, "search_space.x", ["low", "high"])
    with pytest.raises(SpecError, match="expected a mapping, got \\[1, 2\\]"):
        r.mapping([1, 2], "budget", ["a"])


@pytest.mark.parametrize(
    "value, kw, message",
    [
        ("1e-4", {}, r"'1e-4' is a string, not a number .*write 0\.0001"),
        (True, {}, "true is not a number"),
        (2.0, {"integer": True}, "2.0 is not an integer; write 2"),
        (2.5, {"integer": True}, "2.5 is not an integer"),
        (float("nan"), {}, "is not a number"),
        (-1, {"low": 0}, "-1 is out of range; use a value >= 0"),
        (0, {"low": 0, "strict_low": True}, "0 is out of range; use a value > 0"),
        (9, {"high": 8}, "9 is out of range; use a value <= 8"),
        (8, {"high": 8, "strict_high": True}, "8 is out of range; use a value < 8"),
    ],
)
def test_number_refuses(r, value, kw, message):
    with pytest.raises(SpecError, match=message):
        r.number(value, "k", **kw)


def test_number_accepts_in_range(r):
    assert r.number(0, "k", low=0) == 0
    assert r.number(1.5e-4, "k", low=0, strict_low=True) == 1.5e-4
    assert r.number(8, "k", integer=True, high=8) == 8


def test_boolean_and_choice(r):
    assert r.boolean(False, "log") is False
    with pytest.raises(SpecError, match="log: 'yes' is not true or false"):
        r.boolean("yes", "log")
    assert r.choice("tpe", "sampler.name", ["tpe", "gp"]) == "tpe"
    with pytest.raises(SpecError, match=r"'tep' is not allowed \(did you mean 'tpe'\?\); use one of: tpe, gp"):
        r.choice("tep", "sampler.name", ["tpe", "gp"])
    with pytest.raises(SpecError, match="is not allowed"):
        r.choice(["tpe"], "sampler.name", ["tpe"])  # unhashable and not a string: still one line


def test_config_error_keeps_the_models_message(r):
    err = r.config_error(ConfigError("d_model: must be even"), "model: ", "fix the model")
    assert str(err) == "study.yaml: model: d_model: must be even; fix the model"
