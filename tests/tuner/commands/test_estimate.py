"""`tuner estimate`: the prediction for a preset or a study's configuration, as JSON or a table; bad --params are
one line and exit 2."""

from __future__ import annotations

import json

import pytest

from tuner.cli import main

STUDY = """
name: est
vram_ceiling_gib: 8
model: {d_model: 64, n_layers: 2, vocab_size: 500, n_seq: 64}
search_space:
  ar_ssm_max_rank: {type: int, low: 8, high: 32, step: 8}
  use_gradient_checkpointing: {type: categorical, choices: [true, false]}
data: {source: stdlib}
budget: {train_tokens: 20000, eval_tokens: 2000, trial_timeout_s: 600}
"""


def test_cli_json_shape(capsys):

    assert main(["estimate", "--preset", "8gb", "--batch-size", "2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["batch_size"] == 2
    assert set(d) >= {"total_gib", "tensor_gib", "allocator_gib", "outside_gib", "components", "calibrated"}
    assert d["components"]["logits_loss"] > 0


def test_cli_study_params_and_table(tmp_path, capsys):

    study = tmp_path / "s.yaml"
    study.write_text(STUDY)
    assert main(["estimate", str(study), "--params", "ar_ssm_max_rank=16,use_gradient_checkpointing=false"]) == 0
    out = capsys.readouterr().out
    assert "predicted peak" in out and "tensor bytes" in out and "outside the allocator" in out


@pytest.mark.parametrize("params", ["ar_ssm_max_rank", "nope=3", "ar_ssm_max_rank=0"])
def test_cli_bad_params_one_line_error(tmp_path, capsys, params):

    study = tmp_path / "s.yaml"
    study.write_text(STUDY)
    assert main(["estimate", str(study), "--params", params]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
