"""tuner.trial.child: the trial child's side of a trial, driven in this process through a real pipe (the spawned
process and its signals are tests/tuner/trial/test_runner.py's and tests/integration/'s). Every way a run ends
becomes a flat outcome the parent reads; a stop message from the parent ends the trial `interrupted`."""

from __future__ import annotations

import math
import os
from multiprocessing import Pipe

import pytest

from model.data import DataSource
from tuner.trial.child import _ChildState
from tuner.trial.faults import FaultInjection
from tuner.trial.outcome import TrialOutcome, TrialRequest

TINY = {"vocab_size": 512, "d_model": 32, "n_layers": 1, "n_seq": 32, "batch_size": 2}


@pytest.fixture
def child(tmp_path):
    """(the child's state, the parent's end of the pipe, the cache folder)."""
    parent_end, child_end = Pipe()
    state = _ChildState(child_end, gpu=None, parent_pid=os.getppid())  # this process's parent: "the worker is alive"
    yield state, parent_end, str(tmp_path / "cache")
    parent_end.close()
    child_end.close()


def _request(**kw) -> TrialRequest:
    base = dict(
        config=TINY,
        data=DataSource(kind="stdlib", max_bytes=131072),
        train_tokens=4096,
        eval_tokens=256,
        ceiling_gib=1.0,
        trial_number=0,
    )
    return TrialRequest(**{**base, **kw})


def _run(child, **kw) -> TrialOutcome:
    state, _, cache = child
    return TrialOutcome.from_dict(state.run_trial(_request(**kw), cache))


def test_an_injected_failure_is_an_error_outcome_with_its_traceback(child):
    out = _run(child, fault=FaultInjection("error", at_step=1))
    assert out.kind == "error" and "injected failure at step 1" in (out.error_summary or "")
    assert "Traceback" in (out.traceback or "")


def test_a_nonfinite_loss_is_numerical_instability_with_its_diagnostics(child):
    out = _run(child, fault=FaultInjection("nonfinite", at_step=2))
    assert out.kind == "numerical_instability"
    assert out.stability == {"check": "finite_loss", "value": None, "step": 2}  # NaN stored as null


def test_a_config_the_child_cannot_build_is_an_error_naming_the_field(child):
    out = _run(child, config={**TINY, "ar_ssm_min_rank": 16, "ar_ssm_max_rank": 8})
    assert out.kind == "error" and (out.error_summary or "").startswith("ConfigError: ar_ssm")


def test_a_stop_from_the_parent_interrupts_the_trial(child):
    _, parent_end, _ = child
    parent_end.send({"type": "stop"})  # waiting in the pipe: read at the first step
    out = _run(child)
    assert out.kind == "interrupted" and out.error_summary == "worker asked the trial to stop"


@pytest.mark.slow
def test_a_complete_run_reports_its_result_and_progress(child):
    _, parent_end, _ = child
    # the first fault is another trial's; slow steps make sure progress is sent
    faults = [FaultInjection("error", trials=(5,)), FaultInjection("slow", at_step=1, sleep_s=0.1)]
    out = _run(child, fault=faults, train_tokens=1024)
    assert out.kind == "complete" and out.result is not None
    r = out.result
    assert math.isfinite(r["val_ppl"]) and r["val_ppl"] == r["val_ppl_float"] and r["peak_torch_gib"] > 0
    messages = []
    while parent_end.poll():
        messages.append(parent_end.recv())
    assert messages and {m["type"] for m in messages} == {"progress"} and messages[0]["step"] >= 1
    # its seconds: the data opened (prepared here: the cache was empty), the model built, 0.1 s sleeps in the steps
    assert out.data_s > 0 and out.build_s > 0 and out.eval_s > 0
    assert out.train_s >= 16 * 0.1  # 1024 tokens / (batch 2 x n_seq 32) = 16 steps, each sleeping 0.1 s
    assert out.busy_s == out.train_s + out.eval_s


@pytest.mark.slow
def test_a_compile_step_reaches_the_trainer_and_a_cpu_trial_trains_compiled(child, monkeypatch):
    """A real tiny CPU trial with step compile: train_and_evaluate is called with compile_step on and CUDA graphs
    off (compile works on CPU), and the trial completes with a finite PPL."""
    import model.train
    from tuner.study.spec import StepMode

    real = model.train.train_and_evaluate
    seen: list[dict[str, object]] = []

    def spy(*args, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("compile_step", "cuda_graph_step")})
        return real(*args, **kwargs)

    monkeypatch.setattr(model.train, "train_and_evaluate", spy)
    out = _run(child, step=StepMode.COMPILE, train_tokens=512)
    assert seen == [{"compile_step": True, "cuda_graph_step": False}]
    assert out.kind == "complete" and out.result is not None, out.error_summary
    assert math.isfinite(out.result["val_ppl"])


def test_an_eager_request_leaves_both_switches_off(child, monkeypatch):
    import model.train

    seen: list[dict[str, object]] = []

    def spy(*args, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("compile_step", "cuda_graph_step")})
        raise RuntimeError("stop after the call: only the switches are under test")

    monkeypatch.setattr(model.train, "train_and_evaluate", spy)
    out = _run(child)
    assert seen == [{"compile_step": False, "cuda_graph_step": False}] and out.kind == "error"


LNS_TILES = {"lns_bits": 8, "lns_block_size_m": 16, "lns_block_size_n": 32, "lns_block_size_k": 16}


@pytest.mark.parametrize("lns", [False, True], ids=["float", "lns"])
def test_a_trained_trial_measures_its_inference_pass_of_the_model_as_evaluated(child, lns):
    """A real tiny CPU trial, float or LNS: after training, the model as evaluated (LNS-converted for an LNS config)
    gets its own timed pass with its own tensor-bytes peak, recorded as eval_tokens_per_s / eval_peak_gib (a float
    trial when the request asks for it, an LNS trial always)."""
    out = _run(child, config={**TINY, **LNS_TILES, "lns_enabled": lns}, train_tokens=512, measure_inference=not lns)
    assert out.kind == "complete" and out.result is not None, out.error_summary
    r = out.result
    assert r["eval_tokens_per_s"] > 0 and r["eval_time_s"] > 0
    assert r["eval_tokens_per_s"] == pytest.approx(r["eval_tokens"] / r["eval_time_s"])
    assert 0 < r["eval_peak_gib"] and r["eval_peak_kind"] == "cpu_tensor_bytes"
    assert "eval_nvml_gib" not in r  # no NVML on CPU: never a made-up figure
    if lns:
        assert r["lns_converted_linears"] > 0
        assert r["val_ppl"] != r["val_ppl_float"]  # the pass scored the converted (quantised) model
        assert abs(r["val_ppl"] - r["val_ppl_float"]) / r["val_ppl_float"] < 0.1
    else:
        assert "lns_converted_linears" not in r
        # the extra pass scores the trained float model on the trainer's windows: the trainer's PPL again
        assert r["val_ppl"] == r["val_ppl_float"]


def test_a_float_trial_runs_no_extra_pass_unless_an_objective_needs_it(child):
    """The measured pass is one more validation pass: a float trial whose study has no eval_* objective skips it."""
    out = _run(child, config=TINY, train_tokens=512)
    assert out.kind == "complete" and out.result is not None, out.error_summary
    assert not any(k.startswith("eval_") and k != "eval_tokens" for k in out.result), sorted(out.result)
