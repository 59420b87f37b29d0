"""Study files: every bad input is one SpecError line naming the file and the key; good files round-trip."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from model.config import ConfigError, Phase1Config
from tests.tuner.tiny import _DELETE, BASE, REPO, SS, mutate, write
from tuner.errors import SpecError
from tuner.study.loader import load_spec, spec_from_dict

# (case id, spec mapping or YAML text, key that the message must name, a word of the problem/fix)
BAD = [
    ("unknown-top-key", {**BASE, "n_trial": 3}, "n_trial:", "did you mean 'n_trials'"),
    (
        "unknown-param",
        mutate(**{f"{SS}__ar_ssm_max_rnk": {"type": "int", "low": 1, "high": 4}}),
        "search_space.ar_ssm_max_rnk",
        "did you mean 'ar_ssm_max_rank'",
    ),
    (
        "unknown-param-key",
        mutate(**{f"{SS}__ar_ssm_max_rank__hi": 4}),
        "search_space.ar_ssm_max_rank.hi",
        "unknown key",
    ),
    (
        "low-gt-high",
        mutate(**{f"{SS}__ar_ssm_max_rank": {"type": "int", "low": 64, "high": 8}}),
        "search_space.ar_ssm_max_rank",
        "low 64 > high 8",
    ),
    (
        "low-eq-high",
        mutate(**{f"{SS}__ar_ssm_max_rank": {"type": "int", "low": 8, "high": 8}}),
        "search_space.ar_ssm_max_rank",
        "model:",
    ),
    (
        "float-for-int-field",
        mutate(**{f"{SS}__ar_ssm_max_rank": {"type": "float", "low": 8, "high": 16}}),
        "search_space.ar_ssm_max_rank.type",
        "type: int",
    ),
    (
        "int-for-bool-field",
        mutate(**{f"{SS}__htt_phase_encoding": {"type": "int", "low": 0, "high": 1}}),
        "search_space.htt_phase_encoding.type",
        "categorical",
    ),
    (
        "choice-wrong-type",
        mutate(**{f"{SS}__htt_phase_encoding": {"type": "categorical", "choices": [1, 0]}}),
        "search_space.htt_phase_encoding.choices[0]",
        "true or false",
    ),
    (
        "empty-choices",
        mutate(**{f"{SS}__htt_phase_encoding": {"type": "categorical", "choices": []}}),
        "search_space.htt_phase_encoding.choices",
        "non-empty",
    ),
    (
        "duplicate-choice",
        mutate(**{f"{SS}__htt_num_cores": {"type": "categorical", "choices": [2, 2]}}),
        "search_space.htt_num_cores.choices",
        "twice",
    ),
    ("missing-type", mutate(**{f"{SS}__htt_rank": {"low": 8, "high": 16}}), "search_space.htt_rank.type", "missing"),
    (
        "int-float-bound",
        mutate(**{f"{SS}__htt_rank": {"type": "int", "low": 8, "high": 16.5}}),
        "search_space.htt_rank.high",
        "integer",
    ),
    (
        "yaml11-exponent",
        "name: unit\nvram_ceiling_gib: 8\nbudget: {train_tokens: 10, eval_tokens: 10}\n"
        "search_space:\n  ar_ssm_l1_regularization: {type: float, low: 1e-4, high: 1.0e-2}\n",
        "search_space.ar_ssm_l1_regularization.low",
        "1.0e-4",
    ),
    (
        "log-nonpositive",
        mutate(**{f"{SS}__ar_ssm_l1_regularization__low": 0.0}),
        "search_space.ar_ssm_l1_regularization.low",
        "log",
    ),
    (
        "step-not-dividing",
        mutate(**{f"{SS}__ar_ssm_max_rank__high": 30}),
        "search_space.ar_ssm_max_rank.high",
        "use high: 24",
    ),
    (
        "single-value-invalid",
        mutate(**{f"{SS}__htt_num_cores": {"type": "int", "low": 2, "high": 4}}),
        "search_space.htt_num_cores",
        "2 or 3",
    ),
    (
        "min-above-max",
        mutate(**{f"{SS}__ar_ssm_min_rank": {"type": "int", "low": 4, "high": 16}}),
        "search_space.ar_ssm_min_rank",
        "ar_ssm_max_rank=8",
    ),
    (
        "min-above-fixed-max",
        mutate(**{f"{SS}__ar_ssm_max_rank": _DELETE, "model__ar_ssm_max_rank": 4}),
        "search_space.ar_ssm_min_rank",
        "ar_ssm_max_rank = 4",
    ),
    ("also-fixed", mutate(**{"model__ar_ssm_max_rank": 16}), "search_space.ar_ssm_max_rank", "also fixed"),
    ("derived-field", mutate(**{"model__target_vram_gb": 8.0}), "model.target_vram_gb", "vram_ceiling_gib"),
    ("unknown-sampler", mutate(sampler={"name": "cmaes"}), "sampler.name", "tpe"),
    (
        "sampler-option",
        mutate(sampler={"name": "tpe", "population_size": 8}),
        "sampler.population_size",
        "not an option of the tpe sampler",
    ),
    (
        "bad-direction",
        mutate(objectives=[{"metric": "val_ppl", "direction": "minimise"}]),
        "objectives[0].direction",
        "did you mean 'minimize'",
    ),
    ("bad-metric", mutate(objectives=[{"metric": "ppl", "direction": "minimize"}]), "objectives[0].metric", "val_ppl"),
    ("dup-metric", mutate(objectives=[{"metric": "val_ppl"}, {"metric": "val_ppl"}]), "objectives[1].metric", "twice"),
    ("bad-model-value", mutate(model__d_model=4), "model.d_model", ">= 8"),
    ("unknown-model-field", mutate(model__dmodel=64), "model.dmodel", "did you mean 'd_model'"),
    # lns_enabled (fixed or searched) is valid: a trial trains with LNS off and evaluates converted
    # (tests/tuner/test_spec_lns.py, tests/integration/test_lns_trial.py).
    (
        "missing-data-path",
        mutate(data={"source": "files", "path": "/nonexistent/corpus"}),
        "data.path",
        "/nonexistent/corpus",
    ),
    ("unknown-data-source", mutate(data={"source": "web"}), "data.source", "stdlib"),
    ("unknown-data-key", mutate(data={"source": "stdlib", "pth": "x"}), "data.pth", "did you mean 'path'"),
    ("missing-budget", mutate(budget=_DELETE), "budget", "missing"),
    ("budget-tokens", mutate(budget={"train_tokens": 0, "eval_tokens": 10}), "budget.train_tokens", ">= 1"),
    ("unknown-preset", mutate(enqueue_presets=["9gb"]), "enqueue_presets[0]", "did you mean"),
    ("preset-outside-space", mutate(enqueue_presets=["24gb"]), "enqueue_presets[0]", "ar_ssm_max_rank: 64, outside"),
    (
        "when-unknown-key",
        mutate(**{f"{SS}__checkpoint_ar_ssm__when": {"use_checkpointing": False}}),
        "search_space.checkpoint_ar_ssm.when.use_checkpointing",
        "not a parameter",
    ),
    (
        "when-never-holds",
        mutate(
            **{
                f"{SS}__checkpoint_htt": {
                    "type": "categorical",
                    "choices": [True, False],
                    "when": {"lns_enabled": True},
                }
            }
        ),
        "search_space.checkpoint_htt.when.lns_enabled",
        "never holds",
    ),
    (
        "when-wrong-type",
        mutate(**{f"{SS}__checkpoint_ar_ssm__when": {"use_gradient_checkpointing": "no"}}),
        "search_space.checkpoint_ar_ssm.when.use_gradient_checkpointing",
        "true or false",
    ),
    ("when-cycle", mutate(**{f"{SS}__use_gradient_checkpointing__when": {"checkpoint_ar_ssm": True}}), "when", "cycle"),
    ("grid-float", mutate(sampler={"name": "grid"}), "search_space.ar_ssm_l1_regularization", "grid"),
    (
        "pruning-confidence",
        mutate(pruning={"learning_curve": {"confidence": 1.5}}),
        "pruning.learning_curve.confidence",
        "< 1",
    ),
    ("estimate-key", mutate(estimate={"enable": True}), "estimate.enable", "did you mean 'enabled'"),
    ("bad-name", mutate(name="my study!"), "name", "letters"),
    ("missing-name", mutate(name=_DELETE), "name", "missing"),
    ("ceiling", mutate(vram_ceiling_gib=0), "vram_ceiling_gib", "> 0"),
    ("not-mapping", "- a\n- b\n", "", "mapping"),
    ("empty-file", "", "", "empty"),
    ("invalid-yaml", "name: [unclosed\n", "line", "invalid YAML"),
    ("python-tag", "name: !!python/object/apply:os.system ['true']\n", "", "invalid YAML"),
    # issue 17 item 9: each of these was a traceback (TypeError, numpy's ValueError, MemoryError, a Postgres error)
    ("preset-not-a-name", mutate(enqueue_presets=[["8gb"]]), "enqueue_presets[0]", "not a preset name"),
    ("seed-over-32-bits", mutate(sampler__seed=2**32), "sampler.seed", "<= 4294967295"),
    ("name-too-long", mutate(name="a" * 513), "name", "at most 512"),
    (
        "grid-too-large",
        mutate(sampler={"name": "grid"}, search_space={"ffn_rank": {"type": "int", "low": 1, "high": 300_000_000}}),
        "search_space.ffn_rank",
        "more than 100000 points",
    ),
    ("huge-int", yaml.safe_dump(BASE).replace("n_trials: 4", "n_trials: " + "9" * 400), "line", "2^63"),
    ("duplicate-key", yaml.safe_dump(BASE) + "name: second\n", "line", "key 'name' appears twice"),
]


@pytest.mark.parametrize("case, data, key, hint", BAD, ids=[c[0] for c in BAD])
def test_bad_spec_is_one_line_naming_file_and_key(tmp_path, case, data, key, hint):
    path = write(tmp_path, data)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: "), msg
    assert key in msg, msg
    assert hint in msg, msg
    assert ";" in msg, f"no fix given: {msg}"


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_valid_spec_defaults_and_round_trip(tmp_path):
    spec = load_spec(write(tmp_path, BASE))
    assert spec.metric_names == ["val_ppl", "peak_vram_gib"] and spec.directions == ["minimize", "minimize"]
    assert spec.sampler.name == "tpe" and spec.sampler.seed == 0
    assert spec.pruning.enabled is False and spec.pruning.min_fraction == 0.25 and spec.pruning.confidence == 0.9
    assert spec.estimate.enabled is True and spec.estimate.margin == 0.05
    assert spec.budget.train_tokens == 1000 and spec.budget.trial_timeout_s == 60.0
    assert spec.data.kind == "stdlib"
    again = spec_from_dict(yaml.safe_load(spec.to_yaml()), where="stored")
    assert again.to_dict() == spec.to_dict()
    assert again.space == spec.space and again.model == spec.model
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # frozen


def test_default_directions_follow_the_metric():
    spec = spec_from_dict(mutate(objectives=[{"metric": "val_ppl"}, {"metric": "tokens_per_s"}, {"metric": "params"}]))
    assert spec.directions == ["minimize", "maximize", "minimize"]


def test_build_config_fixed_plus_params_and_ceiling(tmp_path):
    spec = load_spec(write(tmp_path, BASE))
    cfg = spec.build_config({"ar_ssm_max_rank": 16, "checkpoint_ar_ssm": True})
    assert isinstance(cfg, Phase1Config)
    assert (cfg.d_model, cfg.ar_ssm_max_rank, cfg.checkpoint_ar_ssm, cfg.target_vram_gb) == (64, 16, True, 8.0)
    with pytest.raises(ConfigError):
        spec.build_config({"ar_ssm_max_rank": 8, "ar_ssm_min_rank": 9})
    with pytest.raises(ConfigError, match="not a parameter"):
        spec.build_config({"d_model": 32})


def test_relative_data_path_is_relative_to_the_study_file(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("hello world\n" * 10)
    spec = load_spec(write(tmp_path, mutate(data={"source": "files", "path": "corpus"})))
    assert spec.data.path == str((tmp_path / "corpus").resolve())
    # a stored spec read on a machine without the data does not check the path
    moved = spec_from_dict(mutate(data={"source": "files", "path": "/nowhere"}), check_paths=False)
    assert moved.data.path == "/nowhere"


def test_preset_params_restricted_to_space():
    d = mutate(enqueue_presets=["8gb"])
    spec = spec_from_dict(d)
    params = spec.preset_params("8gb")
    # 8gb: max_rank 16, min_rank 4, l1 0.01, checkpointing on -> the conditional checkpoint_ar_ssm is inactive
    assert params == {
        "ar_ssm_max_rank": 16,
        "ar_ssm_min_rank": 4,
        "ar_ssm_l1_regularization": 0.01,
        "use_gradient_checkpointing": True,
    }


def test_phase1_8gb_study_has_the_guides_space():
    spec = load_spec(REPO / "studies" / "phase1_8gb.yaml")
    assert set(spec.space.names) == {
        "ar_ssm_max_rank",
        "ar_ssm_min_rank",
        "ar_ssm_l1_regularization",
        "ar_ssm_gate_hidden_dim",
        "htt_rank",
        "htt_num_cores",
        "htt_phase_encoding",
        "use_gradient_checkpointing",
        "checkpoint_ar_ssm",
        "checkpoint_htt",
        "ffn_rank",
        "learning_rate",  # the learning rate is searched in every shipped study
    }
    assert (spec.model["d_model"], spec.model["n_layers"], spec.model["n_seq"], spec.model["vocab_size"]) == (
        1024,
        12,
        2048,
        50257,
    )
    assert spec.vram_ceiling_gib == 8.0 and spec.enqueue_presets == ("8gb",)
    assert spec.preset_params("8gb")["htt_rank"] == 12
