"""bench/throughput.py and bench/profile_step.py: the step-time arithmetic, the synthetic tokens, the ratios to the
dense baseline, and a real --tiny run on CPU (child process per row, both JSON files with the contracted keys)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import throughput  # noqa: E402


def test_steady_ms_takes_step_differences_in_the_window():
    stamps = {1: 0.0, 2: 5.0, 3: 5.1, 4: 5.3, 5: 5.4, 6: 9.0}  # steps 3..5 took 0.1, 0.2, 0.1 s
    median, p10, p90 = throughput.steady_ms(stamps, 3, 5)
    assert median == pytest.approx(100.0)
    assert p10 <= median <= p90
    with pytest.raises(ValueError, match="raise --steps"):
        throughput.steady_ms(stamps, 8, 9)


def test_synthetic_data_is_token_data_of_the_vocabulary():
    data = throughput.synthetic_data(50257, 1000, 100)
    assert data.n_train_tokens == 1000 and data.n_val_tokens == 100
    assert data.train.max() < 50257 and data.corpus_hash == "synthetic"


def test_ratios_are_against_the_eager_dense_row_and_skip_failed_rows():
    rows = [{"model": "dense", "variant": "eager", "tokens_per_s": 100.0},
            {"model": "dense", "variant": "compile", "tokens_per_s": 200.0},
            {"model": "8gb", "variant": "compile", "tokens_per_s": 300.0},
            {"model": "10gb", "variant": "eager", "failed": "exit 1"}]  # fmt: skip
    out = {(r["model"], r["variant"]): r for r in throughput.with_ratios(rows)}
    assert out["8gb", "compile"]["speed_vs_dense"] == pytest.approx(3.0)
    assert out["8gb", "compile"]["speed_vs_dense_same_variant"] == pytest.approx(1.5)
    assert "speed_vs_dense" not in out["10gb", "eager"]


def test_tiny_configs_keep_the_presets_switches():
    c8, c24 = throughput.config_for("8gb", tiny=True), throughput.config_for("24gb", tiny=True)
    assert c8.checkpoint_ar_ssm and c8.use_gradient_checkpointing and not c24.use_gradient_checkpointing
    assert throughput.config_for("dense", tiny=True).d_model == c8.d_model


def test_graph_variants_turn_on_the_graph_switch_and_keep_the_old_keys():
    assert throughput.VARIANTS["graphs"] == (False, False, True)
    assert throughput.VARIANTS["compile_graphs"] == (True, False, True)
    old = {"eager": (False, False), "compile": (True, False), "fused": (False, True), "compile_fused": (True, True)}
    assert {k: throughput.VARIANTS[k][:2] for k in old} == old and not any(throughput.VARIANTS[k][2] for k in old)
    for spec in throughput.GRAPH_ROWS:
        name, variant = spec.split(":")
        assert name in ("8gb", "24gb", "dense") and variant in throughput.VARIANTS


@pytest.mark.slow  # starts a child process
def test_a_graph_row_off_cuda_fails_loudly(tmp_path):
    """No eager fallback: a CUDA-graph row that cannot run is recorded as failed, with its one-line reason."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--tiny", "--rows", "dense:graphs",
                        "--steps", "10", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert r.returncode == 1
    (row,) = json.loads((tmp_path / "throughput.json").read_text())["rows"]
    assert row["failed"].startswith("exit") and "tokens_per_s" not in row
    assert "cuda_graph_step: CUDA graphs need a CUDA device" in row["error_tail"]


@pytest.mark.slow  # trains a tiny model in a child process
def test_tiny_run_writes_both_files(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--tiny", "--rows", "8gb:fused",
                        "--steps", "10", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "throughput.json").read_text())
    (row,) = result["rows"]
    assert {"model", "tokens_per_s", "ms_per_step", "nvml_peak_gib", "mfu", "variant"} <= set(row)
    assert row["model"] == "8gb" and row["variant"] == "fused" and row["tokens_per_s"] > 0
    assert result["data"] == "synthetic"
    (prof,) = json.loads((tmp_path / "profile_step.json").read_text())["profiles"]
    summary = prof["summary"]
    assert summary["steps"] == 3 and summary["wall_ms"] > 0 and summary["top_cpu"]
    assert summary["gpu_idle_fraction"] is None  # no device on a CPU run


def test_profile_summary_leaves_the_profilers_own_step_range_out():
    """The ProfilerStep* range spans the whole step on the device: counting it doubled the busy time (the first H100
    run reported negative idle fractions). Busy = kernels + copies only; idle = 1 - busy / wall."""
    from types import SimpleNamespace as NS

    from bench.profile_step import summarize

    def ev(key, dev, count, device_us=0.0, cpu_us=0.0):
        return NS(key=key, device_type=NS(name=dev), count=count, self_device_time_total=device_us,
                  self_cpu_time_total=cpu_us)  # fmt: skip

    events = [ev("ProfilerStep*", "CUDA", 2, device_us=200_000.0), ev("ProfilerStep*", "CPU", 2, cpu_us=5.0),
              ev("gemm_kernel", "CUDA", 4, device_us=60_000.0), ev("Memcpy DtoD", "CUDA", 2, device_us=20_000.0),
              ev("cudaLaunchKernel", "CPU", 6, cpu_us=30.0), ev("aten::mm", "CPU", 4, cpu_us=40.0)]  # fmt: skip
    s = summarize(NS(key_averages=lambda: events), steps=2, wall_ms=200.0, cuda=True)
    assert s["device_busy_ms"] == pytest.approx(40.0) and s["gpu_idle_fraction"] == pytest.approx(0.6)
    assert s["device_events"] == 3 and s["cuda_launch_calls"] == 3 and s["cpu_ops"] == 2
    assert [r["name"] for r in s["top_device"]] == ["gemm_kernel", "Memcpy DtoD"]
    assert all(not r["name"].startswith("ProfilerStep") for r in s["top_cpu"])
