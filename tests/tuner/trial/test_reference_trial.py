"""The dense reference trial end to end on a tiny CPU study, on SQLite and PostgreSQL: enqueued once, trained
without sampled params or the Phase 1 estimate, recorded like any trial (values, constraint, epochs), marked in
`status` and `pareto`, skipped by `export`; and `tuner train --baseline dense` on a tiny shape."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml

from model.dense_config import DenseConfig, dense_param_counts
from tests.tuner.tiny import mutate, write
from tuner.cli import main
from tuner.storage.trial_attrs import trial_attr

pytestmark = pytest.mark.slow
TINY_MODEL = {"vocab_size": 512, "d_model": 32, "n_layers": 1, "n_seq": 32, "batch_size": 2}
TINY_DATA = {"source": "stdlib", "max_bytes": 262144}


def _study_file(tmp_path, **changes):
    d = mutate(
        name="ref",
        n_trials=2,
        model=TINY_MODEL,
        search_space={"ar_ssm_max_rank": {"type": "int", "low": 4, "high": 8, "step": 4}},
        data=TINY_DATA,
        budget={"train_tokens": 2000, "eval_tokens": 500, "trial_timeout_s": 120},
        baseline="dense",
        **changes,
    )
    return write(tmp_path, d)


def test_reference_trial_runs_once_is_marked_and_never_exported(tmp_path, storage_url, capsys):
    path = _study_file(tmp_path)
    common = ["--storage", storage_url, "--cache-dir", str(tmp_path / "cache")]
    assert main(["run", str(path), *common]) == 0
    study = optuna.load_study(study_name="ref", storage=storage_url)
    refs = [t for t in study.trials if t.user_attrs.get("reference") == "dense"]
    assert len(refs) == 1, [(t.number, t.user_attrs.get("reference")) for t in study.trials]
    ref = refs[0]
    assert ref.state == optuna.trial.TrialState.COMPLETE and ref.params == {}
    assert ref.user_attrs["end_reason"] == "complete" and trial_attr(ref, "config")["kind"] == "dense"
    assert ref.user_attrs["estimate_skipped"].startswith("dense baseline")
    assert "predicted_peak_gib" not in ref.user_attrs
    dense = DenseConfig.from_dict(trial_attr(ref, "config"))
    assert ref.user_attrs["params_total"] == dense_param_counts(dense)["total"]
    assert ref.user_attrs["peak_vram_kind"] == "cpu_tensor_bytes" and ref.values[1] > 0
    assert ref.user_attrs["tokens_per_s"] > 0 and 1.0 < ref.values[0] < 512 * 2
    for t in study.trials:  # every completed trial records how much of its data it saw
        assert 0 < t.user_attrs["epochs"] < 1, (t.number, t.user_attrs.get("epochs"))
    phase1 = [t for t in study.trials if t.number != ref.number]
    assert phase1 and all(t.params for t in phase1)

    # a second run of the same study (more trials) must not enqueue the reference again
    assert main(["run", str(path), "--n-trials", "3", *common]) == 0
    study = optuna.load_study(study_name="ref", storage=storage_url)
    assert len(study.trials) == 3 and sum(t.user_attrs.get("reference") == "dense" for t in study.trials) == 1
    capsys.readouterr()

    assert main(["status", "--study", "ref", "--storage", storage_url, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["reference"]["trial"] == ref.number and s["reference"]["val_ppl"] == pytest.approx(ref.values[0])
    assert s["feasible"] == 2 and s["best_feasible"]["val_ppl"]["trial"] != ref.number
    assert main(["status", "--study", "ref", "--storage", storage_url]) == 0
    assert f"reference: dense (trial {ref.number}" in capsys.readouterr().out

    assert main(["pareto", "--study", "ref", "--storage", storage_url, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[-1]["number"] == ref.number and rows[-1]["reference"] == "dense" and rows[-1]["vs_best_phase1"]
    assert all(r["reference"] is None for r in rows[:-1]) and len(rows) >= 2
    assert main(["pareto", "--study", "ref", "--storage", storage_url]) == 0
    assert "reference: dense" in capsys.readouterr().out

    report = tmp_path / "report"
    assert main(["report", "--study", "ref", "--storage", storage_url, "--out", str(report)]) == 0
    summary = (report / "summary.md").read_text()
    assert "## Reference trial" in summary and f"reference: dense (trial {ref.number}" in summary
    assert ref.number not in [r["number"] for r in json.loads((report / "pareto.json").read_text())]

    out = tmp_path / "best.yaml"
    assert main(["export", "--study", "ref", "--storage", storage_url, "--max-vram-gib", "8", "--out", str(out)]) == 0
    exported = yaml.safe_load(out.read_text())
    assert exported["provenance"]["trial"] != ref.number and "kind" not in exported["config"]


def test_train_baseline_dense_on_a_tiny_shape(tmp_path, capsys):
    argv = [
        "train",
        "--baseline",
        "dense",
        "--vocab-size",
        "512",
        "--d-model",
        "32",
        "--n-layers",
        "1",
        "--n-seq",
        "32",
        "--batch-size",
        "2",
        "--data",
        yaml.safe_dump(TINY_DATA, default_flow_style=True),
        "--train-tokens",
        "2000",
        "--eval-tokens",
        "500",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--json",
        "--storage",
        f"sqlite:///{tmp_path}/t.db",
    ]
    assert main(argv) == 0
    line = json.loads(capsys.readouterr().out)
    counts = dense_param_counts(DenseConfig(vocab_size=512, d_model=32, n_layers=1, n_heads=1, n_seq=32))
    assert line["end_reason"] == "complete" and line["params_total"] == counts["total"]
    assert 1.0 < line["val_ppl"] < 1024 and line["peak_vram_gib"] > 0 and line["ceiling_gib"] == 8.0
    assert line["preset"] == "dense baseline (DenseConfig defaults)"


def test_train_shape_flags_need_baseline(tmp_path, capsys):
    assert main(["train", "--preset", "8gb", "--d-model", "32", "--storage", f"sqlite:///{tmp_path}/t.db"]) == 2
    assert "--d-model is a --baseline flag; add --baseline dense" in capsys.readouterr().err
