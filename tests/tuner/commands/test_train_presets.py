"""`tuner train`'s built-in presets say what they are: `inference` is refused with the README's explanation, a GPU
preset on a CPU warns and prints an ETA from its measured first step, and `cpu` trains on a laptop and learns (val
PPL below the unigram PPL of the same validation tokens)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuner.cli import main
from tuner.commands.train import FirstStepEta
from tuner.study.preset import CPU_PRESET, load_preset

REPO = Path(__file__).resolve().parents[3]


def _tuner(args, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TUNER_STORAGE"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "tuner.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_inference_preset_is_refused_with_the_explanation(tmp_path, capsys):
    code = main(["train", "--preset", "inference", "--storage", f"sqlite:///{tmp_path}/t.db"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "inference-only" in err and "cannot be trained" in err and "8gb" in err
    assert not (tmp_path / ".phase1_cache").exists()  # refused before any data or child
    readme = (REPO / "README.md").read_text()
    assert "training it is refused with an explanation" in readme  # what the README promises


def test_cpu_preset_is_built_in_and_carries_its_budget():
    p = load_preset("cpu")
    assert p.source == "built-in cpu" and p.config == CPU_PRESET.config and p.config is not CPU_PRESET.config
    assert p.provenance["train_tokens"] == 131072 and p.provenance["data"]["kind"] == "stdlib"
    p.provenance["train_tokens"] = 1
    assert load_preset("cpu").provenance["train_tokens"] == 131072  # a copy: callers cannot edit the built-in


def test_first_step_eta_is_time_per_step_times_steps_left():
    eta = FirstStepEta(13)
    assert eta.on_progress({"step": 0, "elapsed_s": 1.0}) is None  # nothing measured yet
    line = eta.on_progress({"step": 1, "elapsed_s": 50.0})
    assert line is not None and "first step took 50.0 s" in line and "12 steps left: ETA 10.0 min" in line
    assert eta.on_progress({"step": 2, "elapsed_s": 100.0}) is None  # once
    two = FirstStepEta(10).on_progress({"step": 2, "elapsed_s": 30.0})  # progress may arrive after a few steps
    assert two is not None and "15.0 s per step" in two and "8 steps left: ETA 2.0 min" in two


@pytest.mark.slow
def test_gpu_preset_on_cpu_warns_then_prints_eta_before_training_on(tmp_path):
    # The 8gb preset's name with a tiny dense shape (--baseline flags): the warning path of a GPU preset on a CPU,
    # in seconds instead of the real preset's minutes per step.
    r = _tuner(
        ["train", "--baseline", "dense", "--preset", "8gb", "--d-model", "32", "--n-layers", "1", "--n-heads", "2",
         "--n-seq", "64", "--batch-size", "4", "--vocab-size", "512", "--vram-ceiling-gib", "1",
         "--data", "{source: stdlib, max_bytes: 262144}", "--train-tokens", "2048", "--eval-tokens", "256"],
        tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stderr.splitlines()
    warn = next(i for i, ln in enumerate(lines) if "warning: 8gb is a GPU preset" in ln)
    eta = next(i for i, ln in enumerate(lines) if "steps left: ETA" in ln)
    first_step = next(i for i, ln in enumerate(lines) if ln.startswith("step "))
    assert warn < eta < first_step, lines
    assert "8 steps)" in lines[warn]  # ceil(2048 / (4 * 64))
    step = int(lines[first_step].split()[1])
    assert f"{8 - step} steps left" in lines[eta]


@pytest.mark.slow
def test_cpu_preset_trains_and_beats_the_unigram_ppl(tmp_path):
    from model.corpus import DataSource
    from model.data import prepare_data, unigram_val_loss

    t0 = time.monotonic()
    r = _tuner(["train", "--preset", "cpu", "--json"], tmp_path)
    wall = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert line["end_reason"] == "complete" and line["preset"] == "built-in cpu"
    cfg, prov = CPU_PRESET.config, CPU_PRESET.provenance
    data = prepare_data(DataSource.from_dict(prov["data"]), cfg.vocab_size, tmp_path / ".phase1_cache")
    unigram_ppl = math.exp(unigram_val_loss(data, cfg.n_seq, prov["eval_tokens"]))
    assert line["val_ppl"] < 0.8 * unigram_ppl, (line["val_ppl"], unigram_ppl)  # measured: 409 against 704
    assert wall < 240, wall  # about a minute on 2 cores, with the tokenizer trained from scratch
    assert "warning" not in r.stderr  # not a GPU preset


def test_estimate_says_what_the_gpu_preset_names_mean(capsys):
    peaks = {}
    for name in ("8gb", "10gb"):
        assert main(["estimate", "--preset", name, "--json"]) == 0
        peaks[name] = json.loads(capsys.readouterr().out)["total_gib"]
    assert abs(peaks["8gb"] - peaks["10gb"]) < 0.1 < 8 - peaks["8gb"]  # the README's explanation: same shape
    assert main(["estimate", "--preset", "8gb"]) == 0
    assert "8gb names the card the tuning guide wrote it for (target_vram_gb 8 GiB)" in capsys.readouterr().out
    assert main(["estimate", "--preset", "cpu"]) == 0
    assert "names the card" not in capsys.readouterr().out
