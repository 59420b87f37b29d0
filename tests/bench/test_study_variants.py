"""bench/study_variants.py: each option changes its one setting of the study file and nothing else, the variant is
a study the tuner loads, and a variant it would refuse is refused in one line with no file written."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench import study_variants as sv
from tuner.study.loader import load_spec

SOURCE = Path(__file__).resolve().parents[2] / "studies" / "phase1_8gb.yaml"


def test_every_option_changes_its_setting_only(tmp_path):
    out = tmp_path / "v.yaml"
    argv = [str(SOURCE), "--out", str(out), "--name", "v", "--ceiling-gib", "24", "--n-trials", "7", "--sampler",
            "random", "--train-tokens", "500000", "--eval-tokens", "65536", "--pruning", "on", "--step", "eager",
            "--no-baseline", "--no-enqueue"]  # fmt: skip
    assert sv.main(argv) == 0
    src, got = yaml.safe_load(SOURCE.read_text()), yaml.safe_load(out.read_text())
    assert got["name"] == "v" and got["vram_ceiling_gib"] == 24 and got["n_trials"] == 7
    assert got["sampler"] == {"name": "random", "seed": src["sampler"]["seed"]}  # n_startup_trials is TPE's only
    assert got["budget"] == {**src["budget"], "train_tokens": 500000, "eval_tokens": 65536}
    assert got["pruning"]["learning_curve"] == {**src["pruning"]["learning_curve"], "enabled": True}
    assert got["training"] == {"step": "eager"} and "baseline" not in got and "enqueue_presets" not in got
    assert got["search_space"] == src["search_space"] and got["model"] == src["model"] and got["data"] == src["data"]
    spec = load_spec(out)
    assert spec.sampler.name == "random" and float(spec.vram_ceiling_gib) == 24 and spec.baseline is None


def test_without_options_only_the_name_changes(tmp_path):
    out = tmp_path / "same.yaml"
    assert sv.main([str(SOURCE), "--out", str(out), "--name", "same"]) == 0
    src, got = yaml.safe_load(SOURCE.read_text()), yaml.safe_load(out.read_text())
    assert got == {**src, "name": "same"}


def test_a_variant_the_tuner_refuses_is_one_line_and_no_file(tmp_path, capsys):
    out = tmp_path / "bad.yaml"
    assert sv.main([str(SOURCE), "--out", str(out), "--name", "bad", "--ceiling-gib", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("study_variants: ") and "vram_ceiling_gib" in err and "\n" not in err
    assert not out.exists()
