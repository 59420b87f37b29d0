"""LNS in a study: lns_enabled (fixed under model:, or a search-space parameter) is a valid study setting, because a
trial trains the config with LNS off and evaluates the converted model (tuner.trial.runner); the built config keeps
lns_enabled so the trial knows to convert. The trainability rule itself still runs on every corner of the space."""

from __future__ import annotations

import pytest

from model.config import ConfigError, Phase1Config
from tests.tuner.tiny import REPO, mutate
from tuner.errors import SpecError
from tuner.study.loader import load_spec, spec_from_dict
from tuner.study.spec import trial_trainable

BASE = mutate(
    name="lns_unit", search_space={"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
)


def test_fixed_lns_model_is_accepted_and_built_with_lns():
    spec = spec_from_dict({**BASE, "model": {**BASE["model"], "lns_enabled": True}}, check_paths=False)
    assert spec.build_config({"learning_rate": 3e-3}).lns_enabled is True


def test_searched_lns_enabled_is_accepted():
    space = {**BASE["search_space"], "lns_enabled": {"type": "categorical", "choices": [False, True]}}
    spec = spec_from_dict({**BASE, "search_space": space}, check_paths=False)
    assert spec.build_config({"learning_rate": 3e-3, "lns_enabled": True}).lns_enabled is True
    assert spec.build_config({"learning_rate": 3e-3, "lns_enabled": False}).lns_enabled is False


def test_trial_trainable_allows_lns_but_still_applies_the_config_rule(monkeypatch):
    trial_trainable(Phase1Config(lns_enabled=True))  # no error: trained with LNS off, then converted

    def refuse(self):
        raise ConfigError("d_model: refused by a stricter trainability rule")

    monkeypatch.setattr(Phase1Config, "check_trainable", refuse)
    with pytest.raises(ConfigError, match="refused"):
        trial_trainable(Phase1Config(lns_enabled=True))


def test_the_inference_metrics_are_objectives_with_their_natural_directions():
    objectives = [{"metric": "val_ppl"}, {"metric": "eval_tokens_per_s"}, {"metric": "eval_peak_gib"}]
    spec = spec_from_dict({**BASE, "objectives": objectives}, check_paths=False)
    assert spec.metric_names == ["val_ppl", "eval_tokens_per_s", "eval_peak_gib"]
    assert spec.directions == ["minimize", "maximize", "minimize"]
    # as for tokens_per_s, a stated direction is the user's to choose
    flipped = [
        {"metric": "eval_tokens_per_s", "direction": "minimize"},
        {"metric": "eval_peak_gib", "direction": "maximize"},
    ]
    assert spec_from_dict({**BASE, "objectives": flipped}, check_paths=False).directions == ["minimize", "maximize"]


def test_an_unknown_metric_is_one_line_naming_the_key_and_the_metrics():
    with pytest.raises(SpecError) as e:
        spec_from_dict({**BASE, "objectives": [{"metric": "eval_ppl"}]}, where="test.yaml", check_paths=False)
    message = str(e.value)
    assert "\n" not in message and message.startswith("test.yaml: objectives[0].metric")
    assert "eval_tokens_per_s" in message and "eval_peak_gib" in message


def test_the_lns_inference_study_file_loads():
    spec = load_spec(REPO / "studies" / "lns_inference.yaml")
    assert spec.metric_names == ["val_ppl", "eval_tokens_per_s", "eval_peak_gib"]
    assert spec.directions == ["minimize", "maximize", "minimize"]
    assert {"lns_enabled", "lns_block_size_m", "lns_block_size_n", "lns_block_size_k"} <= set(spec.space.names)
    tiles = {"lns_block_size_m": 16, "lns_block_size_n": 128, "lns_block_size_k": 64}
    cfg = spec.build_config({"lns_enabled": True, "lns_bits": 8, **tiles})
    assert (cfg.lns_enabled, cfg.lns_block_size_m, cfg.lns_block_size_n, cfg.lns_block_size_k) == (True, 16, 128, 64)
    trial_trainable(cfg)
