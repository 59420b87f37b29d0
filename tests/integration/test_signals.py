"""Worker reliability on real Postgres with real processes and tiny real models:

- SIGTERM to a worker mid-trial: the trial ends FAIL / `interrupted`, a retry with the same params is queued and
  records the trial it replaces, the worker exits 0 within 30 s, and a later worker runs the retry.
- A torch.cuda.OutOfMemoryError, an exception and a non-finite loss raised inside the training step (through the
  test-only FaultInjection hook the trial child honours: a double of the failure, not of the service) are recorded
  with their reasons (and traceback summaries); the worker continues and finishes the study.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from tuner.storage.trial_attrs import trial_attr
from tuner.trial.faults import FaultInjection

TrialState = optuna.trial.TrialState


def _spec(name: str, n_trials: int, train_tokens: int = 2048):
    from tuner.study.loader import spec_from_dict

    return spec_from_dict({
        "name": name,
        "objectives": [{"metric": "val_ppl", "direction": "minimize"},
                       {"metric": "peak_vram_gib", "direction": "minimize"}],
        "vram_ceiling_gib": 1,
        "sampler": {"name": "random", "seed": 0},
        "n_trials": n_trials,
        "model": {"vocab_size": 512, "d_model": 32, "n_layers": 1, "n_seq": 64, "batch_size": 4, "dtype": "float32",
                  "loss_chunk_size": 0},
        "search_space": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        "data": {"source": "stdlib", "max_bytes": 262144},
        "budget": {"train_tokens": train_tokens, "eval_tokens": 1024, "trial_timeout_s": 120},
    })


WORKER_SCRIPT = """
import sys
from tuner.study.loader import spec_from_dict
from tuner.trial.faults import FaultInjection
from tuner.storage.connect import open_storage
from tuner.trial.worker import run_worker
import yaml
spec = spec_from_dict(yaml.safe_load(open(sys.argv[1]).read()))
fault = FaultInjection("slow", at_step=1, trials=(0,), sleep_s=0.5) if sys.argv[4] == "slow" else None
sys.exit(run_worker(spec, storage=open_storage(sys.argv[2]), seed=spec.sampler.seed, cache_dir=sys.argv[3], fault=fault))
"""


@pytest.mark.slow
def test_sigterm_mid_trial_retries_and_exits_zero(tmp_path, pg_url):
    spec = _spec("sigterm", n_trials=2, train_tokens=8192)  # 32 steps x 0.5 s (slow hook): long enough to hit
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(spec.to_yaml())
    cache = str(tmp_path / "cache")
    proc = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, str(spec_file), pg_url, cache, "slow"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        from tuner.storage.connect import open_storage
        from tuner.storage.studies import load_study

        storage = open_storage(pg_url)
        deadline = time.monotonic() + 120
        study = None
        while time.monotonic() < deadline:  # wait until trial 0 is training (the child reported a step)
            try:
                study = load_study("sigterm", storage)
            except Exception:
                study = None
            if study is not None:
                running = study.get_trials(states=(TrialState.RUNNING,))
                if running and running[0].user_attrs.get("device"):
                    break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.3)
        else:
            pytest.fail("trial 0 never started")
        time.sleep(3.0)  # mid-trial: a few slow steps in
        t_sig = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        exit_s = time.monotonic() - t_sig
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read()
    print(f"SIGTERM -> exit {code} in {exit_s:.2f} s")
    assert code == 0, out[-3000:]
    assert exit_s < 30.0

    trials = study.get_trials()
    t0 = next(t for t in trials if t.number == 0)
    assert t0.state == TrialState.FAIL and t0.user_attrs["end_reason"] == "interrupted"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING
    assert retries[0].params == t0.params and retries[0].system_attrs["retry_history"] == [0]
    assert not study.get_trials(states=(TrialState.RUNNING,))

    # A later worker (no fault) runs the retry first and finishes the budget: the interrupted trial is not counted.
    rerun = subprocess.run([sys.executable, "-c", WORKER_SCRIPT, str(spec_file), pg_url, cache, "none"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    trials = study.get_trials()
    retry = next(t for t in trials if t.number == retries[0].number)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == 0
    assert retry.user_attrs["end_reason"] == "complete" and retry.user_attrs.get("error_summary") is None
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


@pytest.mark.slow
def test_failures_inside_the_step_are_recorded_and_the_worker_continues(tmp_path, pg_url):
    from tuner.storage.connect import open_storage
    from tuner.storage.constraints import constraint_value
    from tuner.storage.studies import load_study
    from tuner.trial.worker import run_worker

    spec = _spec("faults", n_trials=4)
    faults = [FaultInjection("oom", at_step=2, trials=(0,)), FaultInjection("error", at_step=2, trials=(1,)),
              FaultInjection("nonfinite", at_step=2, trials=(2,))]
    code = run_worker(spec, storage=open_storage(pg_url), seed=spec.sampler.seed, cache_dir=tmp_path / "cache", fault=faults, install_signal_handlers=False)
    assert code == 0
    trials = {t.number: t for t in load_study("faults", open_storage(pg_url)).get_trials()}
    assert sorted(trials) == [0, 1, 2, 3]

    oom = trials[0]  # COMPLETE but infeasible, so every sampler learns from it
    assert oom.state == TrialState.COMPLETE and oom.user_attrs["end_reason"] == "oom"
    assert "OutOfMemoryError" in oom.user_attrs["error_summary"]
    assert "raise_fault" in oom.user_attrs["traceback"]
    assert constraint_value(oom) > 0 and oom.values[0] == 512.0  # vocab_size: the uniform model's PPL
    assert "vocab_size" in oom.user_attrs["objective_note"] and oom.user_attrs["child_replaced"] is True

    err = trials[1]
    assert err.state == TrialState.FAIL and err.user_attrs["end_reason"] == "error"
    assert err.user_attrs["error_summary"].startswith("InjectedFault") and "Traceback" in err.user_attrs["traceback"]

    nan = trials[2]
    assert nan.state == TrialState.PRUNED and nan.user_attrs["end_reason"] == "numerical_instability"
    assert trial_attr(nan, "stability")["check"] == "finite_loss" and trial_attr(nan, "stability")["step"] == 2

    ok = trials[3]  # the worker continued, on a fresh child after the OOM
    assert ok.state == TrialState.COMPLETE and ok.user_attrs["end_reason"] == "complete"
    assert constraint_value(ok) <= 0 and ok.values[0] < 512.0 * 1.5


@pytest.mark.slow
def test_sigterm_to_launch_interrupts_every_worker_and_exits_zero(tmp_path, pg_url):
    """`tuner launch --workers 2`: SIGTERM is forwarded; both running trials end `interrupted` and are re-queued."""
    import yaml

    spec = _spec("launch_sigterm", n_trials=4, train_tokens=400_000)  # long trials: SIGTERM lands mid-trial
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.to_dict()))
    env = {**os.environ, "TUNER_STORAGE": pg_url}
    proc = subprocess.Popen([sys.executable, "-m", "tuner.cli", "launch", str(spec_file), "--workers", "2",
                             "--cache-dir", str(tmp_path / "cache")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    from tuner.storage.connect import open_storage
    from tuner.storage.studies import load_study

    try:
        storage = open_storage(pg_url)
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            try:
                running = load_study("launch_sigterm", storage).get_trials(states=(TrialState.RUNNING,))
            except Exception:
                running = []
            if len([t for t in running if t.user_attrs.get("device")]) == 2:
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.3)
        else:
            pytest.fail("two trials never ran at once")
        time.sleep(1.0)
        t_sig = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        exit_s = time.monotonic() - t_sig
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read()
    print(f"launch SIGTERM -> exit {code} in {exit_s:.2f} s")
    assert code == 0 and exit_s < 30.0, out[-3000:]
    trials = load_study("launch_sigterm", open_storage(pg_url)).get_trials()
    interrupted = [t for t in trials if t.user_attrs.get("end_reason") == "interrupted"]
    assert len(interrupted) == 2 and all(t.state == TrialState.FAIL for t in interrupted)
    retried = sorted(t.system_attrs["failed_trial"] for t in trials if t.state == TrialState.WAITING)
    assert retried == sorted(t.number for t in interrupted)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
