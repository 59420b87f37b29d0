"""Two worker processes (under `tuner launch --workers 2`) share one study on real Postgres and complete its N trials
together: unique trial numbers, none left RUNNING, every trial with both objective values or a recorded reason."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

N_TRIALS = 6

TINY_STUDY = {
    "name": "two_workers",
    "objectives": [{"metric": "val_ppl", "direction": "minimize"},
                   {"metric": "peak_vram_gib", "direction": "minimize"}],
    "vram_ceiling_gib": 1,
    "sampler": {"name": "tpe", "seed": 0},
    "n_trials": N_TRIALS,
    "model": {"vocab_size": 512, "d_model": 32, "n_layers": 1, "n_seq": 64, "batch_size": 4, "dtype": "float32",
              "loss_chunk_size": 0},
    "search_space": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                     "ar_ssm_max_rank": {"type": "int", "low": 8, "high": 16, "step": 8}},
    "data": {"source": "stdlib", "max_bytes": 262144},
    "budget": {"train_tokens": 2048, "eval_tokens": 1024, "trial_timeout_s": 120},
}


@pytest.mark.slow
def test_two_workers_share_one_postgres_study(tmp_path, pg_url):
    study_file = tmp_path / "two_workers.yaml"
    study_file.write_text(yaml.safe_dump(TINY_STUDY))
    env = {**os.environ, "TUNER_STORAGE": pg_url}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", "launch", str(study_file), "--workers", "2",
                           "--cache-dir", str(tmp_path / "cache")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    print(f"two workers, {N_TRIALS} trials: {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    import optuna

    study = optuna.load_study(study_name="two_workers", storage=pg_url)
    trials = study.trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert not [t.number for t in trials if t.state in (optuna.trial.TrialState.RUNNING,
                                                          optuna.trial.TrialState.WAITING)]
    finished = [t for t in trials if t.state.is_finished()]
    # The shared budget: N in total, at most one extra if both workers asked at the same instant.
    assert N_TRIALS <= len(finished) <= N_TRIALS + 1, [(t.number, t.state) for t in trials]
    for t in finished:
        assert t.user_attrs.get("end_reason"), f"trial {t.number} has no end_reason"
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.values is not None and len(t.values) == 2
    workers = {t.user_attrs["worker"] for t in finished}
    assert len(workers) == 2, f"trials were run by {workers}, expected two worker processes"


def test_launch_gpus_all_without_a_gpu_says_use_workers(tmp_path):
    from tuner.vram.nvml import nvml_available

    if nvml_available():
        pytest.skip("this machine has an NVIDIA GPU")
    study_file = tmp_path / "two_workers.yaml"
    study_file.write_text(yaml.safe_dump(TINY_STUDY))
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", "launch", str(study_file), "--gpus", "all",
                           "--storage", f"sqlite:///{tmp_path / 'x.db'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --gpus all:") and "--workers N" in lines[0]
