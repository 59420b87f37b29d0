"""`tuner train --preset FILE`: where data and budget come from (flag > provenance > --study > default), and a
malformed provenance value is a one-line error naming the file and the key (exit 2), never a traceback and never
silently replaced by a default. The settings are resolved before any training, so nothing here starts a child."""

from __future__ import annotations

import argparse

import pytest

from model.config import Phase1Config
from model.data import DataSource
from tuner.cli import main
from tuner.commands.train import DEFAULT_EVAL_TOKENS, _settings
from tuner.study.preset import load_preset, write_preset
from tuner.study.spec import StepMode

CFG = Phase1Config(vocab_size=512, d_model=32, n_layers=1, n_seq=64)


def _preset(tmp_path, **extra):
    return write_preset(
        tmp_path / "p.yaml", CFG, study="s", trial=0, val_ppl=10.0, peak_vram_gib=0.1, device="cpu", **extra
    )


def _args(**kw):
    base = {"data": None, "train_tokens": None, "eval_tokens": None, "study": None, "step": None}
    return argparse.Namespace(**{**base, **kw})


def test_provenance_supplies_data_and_budget_and_flags_override(tmp_path):
    ds = DataSource(kind="stdlib", max_bytes=65536)
    path = _preset(tmp_path, data=ds.to_dict(), train_tokens=4096, eval_tokens=512)
    preset = load_preset(path)
    assert _settings(_args(), preset) == (ds, 4096, 512, "provenance", StepMode.EAGER)
    data, train, evals, src, _ = _settings(_args(data="stdlib", train_tokens=100, eval_tokens=50), preset)
    assert (data, train, evals, src) == (DataSource(kind="stdlib"), 100, 50, "--data")


def test_old_preset_without_reproduction_keys_uses_the_defaults(tmp_path):
    preset = load_preset(_preset(tmp_path))
    data, train, evals, src, step = _settings(_args(), preset)
    assert data == DataSource(kind="stdlib") and src == "default" and evals == DEFAULT_EVAL_TOKENS
    assert step is StepMode.EAGER


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({"train_tokens": "abc"}, "provenance.train_tokens: 'abc' is not a positive integer"),
        ({"eval_tokens": 0}, "provenance.eval_tokens: 0 is not a positive integer"),
        ({"eval_tokens": {"source": "nowhere"}}, "provenance.eval_tokens: {'source': 'nowhere'} is not a positive"),
        ({"data": "nowhere"}, "provenance.data: expected a mapping"),
        ({"step_mode": "fast"}, "provenance.step_mode: 'fast' is not a step; use one of: eager, compile, compile_"),
    ],
)
def test_malformed_provenance_is_a_one_line_error(tmp_path, capsys, extra, expected):
    path = _preset(tmp_path, **extra)
    code = main(["train", "--preset", str(path), "--json", "--storage", f"sqlite:///{tmp_path}/t.db"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert str(path) in err


def test_the_step_comes_from_the_flag_then_the_preset_then_the_study_file(tmp_path):
    from tests.tuner.tiny import BASE, write

    study_file = write(tmp_path, {**BASE, "training": {"step": "compile"}})
    exported = load_preset(_preset(tmp_path, step_mode="compile_graphs"))
    assert _settings(_args(), exported)[4] is StepMode.COMPILE_GRAPHS
    assert _settings(_args(study=str(study_file)), exported)[4] is StepMode.COMPILE_GRAPHS  # the preset's own wins
    assert _settings(_args(step="eager"), exported)[4] is StepMode.EAGER  # the flag overrides
    plain = load_preset(_preset(tmp_path))  # a preset from before step modes
    assert _settings(_args(study=str(study_file)), plain)[4] is StepMode.COMPILE
    assert _settings(_args(), plain)[4] is StepMode.EAGER


def test_an_unknown_step_flag_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--preset", "cpu", "--step", "graphs"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--step: invalid choice: 'graphs'" in err, err


def test_compile_graphs_on_a_cpu_is_refused_before_training_in_one_line(tmp_path, capsys):
    path = _preset(tmp_path, step_mode="compile_graphs", train_tokens=64, eval_tokens=64)
    code = main(["train", "--preset", str(path), "--json", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "train: step compile_graphs replays CUDA graphs and needs a CUDA device" in err and "--step" in err
