"""`tuner launch`: --per-gpu parsing, the per-GPU plan from (stand-in) NVML figures, one-line refusals, and a real
CPU launch with two workers per slot on SQLite (real worker processes, real trials, the summary and the
gpu_busy_frac attribute they record)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from tests.tuner.tiny import mutate
from tuner.commands.launch import calibration_note, parse_per_gpu, plan_counts
from tuner.errors import TunerError
from tuner.study.loader import spec_from_dict
from tuner.trial.packing import CONTEXT_FLOOR_GIB, HEADROOM_FRACTION, largest_predicted_gib, workers_per_gpu

REPO = Path(__file__).resolve().parents[3]
CPU_STUDY = {
    "name": "packed_cpu",
    "objectives": [
        {"metric": "val_ppl", "direction": "minimize"},
        {"metric": "peak_vram_gib", "direction": "minimize"},
    ],
    "vram_ceiling_gib": 1,
    "sampler": {"name": "tpe", "seed": 0},
    "n_trials": 4,
    "model": {
        "vocab_size": 512,
        "d_model": 32,
        "n_layers": 1,
        "n_seq": 64,
        "batch_size": 4,
        "dtype": "float32",
        "loss_chunk_size": 0,
    },
    "search_space": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
    "data": {"source": "stdlib", "max_bytes": 262144},
    "budget": {"train_tokens": 2048, "eval_tokens": 1024, "trial_timeout_s": 120},
}


def _launch(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "tuner.cli", "launch", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_parse_per_gpu():
    assert parse_per_gpu(None) == 1 and parse_per_gpu("auto") is None and parse_per_gpu(" AUTO ") is None
    assert parse_per_gpu("3") == 3
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(TunerError, match="--per-gpu"):
            parse_per_gpu(bad)


def test_an_uncalibrated_gpu_estimate_is_said_in_one_line():
    """On the H100 a launch on a fresh machine ran every trial with `estimate_calibrated: False`: the estimate left out
    the memory outside the allocator and eager trials measured a median 24% over it. launch now says so."""
    from tuner.vram.calibration import CalibrationChoice, DeviceCalibration, describe_calibration

    spec = spec_from_dict(mutate(vram_ceiling_gib=8), check_paths=False)
    note = calibration_note(spec, CalibrationChoice(None, False, describe_calibration(None)))
    assert note is not None and "NOT calibrated" in note and "tuner estimate --calibrate" in note
    assert "\n" not in note
    cal = DeviceCalibration(
        device="H100", driver="580", torch="2.11", context_gib=0.5, outside_gib=0.8, workspace_gib=0.0
    )
    stored = CalibrationChoice(cal, True, "stored calibration")
    assert calibration_note(spec, stored) is None
    off = spec_from_dict(mutate(vram_ceiling_gib=8, estimate={"enabled": False}), check_paths=False)
    assert calibration_note(off, CalibrationChoice(None, False, describe_calibration(None))) is None


def test_plan_per_gpu_from_each_cards_free_memory(monkeypatch):
    import tuner.vram.nvml as nvml

    free = {0: (79.2, 78.6), 1: (79.2, 40.0)}  # GPU 1 half taken by another job
    monkeypatch.setattr(nvml, "nvml_memory_gib", lambda i: free[i])
    monkeypatch.setattr(nvml, "current_device_key", lambda i=0: None)
    monkeypatch.setattr("tuner.trial.packing.cpu_workers_cap", lambda n, cpu_count=None: 64)
    spec = spec_from_dict(mutate(vram_ceiling_gib=8, baseline="dense"), check_paths=False)
    from tuner.vram.calibration import choose_calibration

    choice = choose_calibration(None, None)  # what launch picks here (a stored entry, borrowed, or none)
    counts, reference, lines = plan_counts(spec, [0, 1], None, choice)
    predicted = largest_predicted_gib(spec, choice.calibration, calibrated=choice.calibrated)
    assert predicted is not None and predicted < 8  # the tiny space: its prediction, not the ceiling, sizes it
    share = max(predicted, CONTEXT_FLOOR_GIB) * (1 + HEADROOM_FRACTION)
    assert reference == pytest.approx(2 * share)
    expected = [
        min(64, workers_per_gpu(f, 8, predicted, card_total_gib=t, reference_gib=2 * share)) for t, f in free.values()
    ]
    assert counts == expected and counts[0] > counts[1] >= 1
    assert lines[0].startswith(f"GPU 0: {counts[0]} worker(s) x {share:.1f} GiB (the largest predicted peak")
    with pytest.raises(TunerError, match="--per-gpu 40: .* use --per-gpu"):
        plan_counts(spec, [0, 1], 40, choice)


def test_per_gpu_auto_without_a_gpu_is_one_line_exit_2(tmp_path):
    from tuner.vram.nvml import NvmlUnavailable, nvml_available, nvml_memory_gib

    if nvml_available():
        pytest.skip("this machine has an NVIDIA GPU")
    with pytest.raises(NvmlUnavailable):
        nvml_memory_gib(0)
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump(CPU_STUDY))
    for args in (["--workers", "1", "--per-gpu", "auto"], ["--gpus", "0", "--per-gpu", "auto"]):
        proc = _launch([str(study), *args, "--storage", f"sqlite:///{tmp_path / 'x.db'}"], tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: --per-gpu auto") and "give --per-gpu N" in lines[0]
    proc = _launch(
        [str(study), "--workers", "1", "--per-gpu", "0", "--storage", f"sqlite:///{tmp_path / 'x.db'}"], tmp_path
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_two_workers_per_slot_on_cpu_share_the_study(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump(CPU_STUDY))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    proc = _launch(
        [str(study), "--workers", "1", "--per-gpu", "2", "--storage", url, "--cache-dir", str(tmp_path / "cache")],
        tmp_path,
        timeout=300,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "launch: 2 worker(s) on study packed_cpu" in out
    assert "[w0] " in out and "[w1] " in out  # each worker's lines carry its slot
    study_obj = optuna.load_study(study_name="packed_cpu", storage=url)
    finished = [t for t in study_obj.trials if t.state.is_finished()]
    assert 4 <= len(finished) <= 5
    workers = {t.user_attrs["worker"] for t in finished}
    assert len(workers) == 2, workers  # two processes, both on the one slot's device
    trained = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    assert trained and all(0.0 < t.user_attrs["gpu_busy_frac"] <= 1.0 for t in trained)
    # the summary: one line per worker and the totals
    assert any(line.startswith("w0: complete ") for line in out.splitlines())
    assert any(line.startswith("w1: complete ") for line in out.splitlines())
    total = [line for line in out.splitlines() if line.startswith("launch: ") and "trained trials per hour" in line]
    assert len(total) == 1 and f"launch: {len(finished)} trials finished in " in total[0]
