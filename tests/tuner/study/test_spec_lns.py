"""LNS in a study: lns_enabled (fixed under model:, or a search-space parameter) is a valid study setting, because a
trial trains the config with LNS off and evaluates the converted model (tuner.trial.runner); the built config keeps
lns_enabled so the trial knows to convert. The trainability rule itself still runs on every corner of the space."""

from __future__ import annotations

import pytest

from model.config import ConfigError, Phase1Config
from tests.tuner.tiny import mutate
from tuner.study.loader import spec_from_dict
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
