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

CFG = Phase1Config(vocab_size=512, d_model=32, n_layers=1, n_seq=64)


def _preset(tmp_path, **extra):
    return write_preset(
        tmp_path / "p.yaml", CFG, study="s", trial=0, val_ppl=10.0, peak_vram_gib=0.1, device="cpu", **extra
    )


def _args(**kw):
    base = {"data": None, "train_tokens": None, "eval_tokens": None, "study": None}
    return argparse.Namespace(**{**base, **kw})


def test_provenance_supplies_data_and_budget_and_flags_override(tmp_path):
    ds = DataSource(kind="stdlib", max_bytes=65536)
    path = _preset(tmp_path, data=ds.to_dict(), train_tokens=4096, eval_tokens=512)
    preset = load_preset(path)
    assert _settings(_args(), preset) == (ds, 4096, 512, "provenance")
    data, train, evals, src = _settings(_args(data="stdlib", train_tokens=100, eval_tokens=50), preset)
    assert (data, train, evals, src) == (DataSource(kind="stdlib"), 100, 50, "--data")


def test_old_preset_without_reproduction_keys_uses_the_defaults(tmp_path):
    preset = load_preset(_preset(tmp_path))
    data, train, evals, src = _settings(_args(), preset)
    assert data == DataSource(kind="stdlib") and src == "default" and evals == DEFAULT_EVAL_TOKENS


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({"train_tokens": "abc"}, "provenance.train_tokens: 'abc' is not a positive integer"),
        ({"eval_tokens": 0}, "provenance.eval_tokens: 0 is not a positive integer"),
        ({"eval_tokens": {"source": "nowhere"}}, "provenance.eval_tokens: {'source': 'nowhere'} is not a positive"),
        ({"data": "nowhere"}, "provenance.data: expected a mapping"),
    ],
)
def test_malformed_provenance_is_a_one_line_error(tmp_path, capsys, extra, expected):
    path = _preset(tmp_path, **extra)
    code = main(["train", "--preset", str(path), "--json", "--storage", f"sqlite:///{tmp_path}/t.db"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert str(path) in err
