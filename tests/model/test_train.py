"""model.train: a tiny real model trained on real text (the stdlib sources) on CPU."""

from __future__ import annotations

import math

import pytest
import torch

from model.config import ConfigError, Phase1Config
from model.data import DataError, DataSource, prepare_data
from model.errors import NumericalInstabilityError
from model.lm import build_model
from model.train import EvalInfo, RunTimes, StepInfo, evaluate, train_and_evaluate

# Its module-scoped fixture runs once per pytest-xdist process: keep the module's tests on one (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("train")

VOCAB = 512
TOKENS_PER_STEP = 8 * 64  # batch 8 x n_seq 64
TINY = dict(vocab_size=VOCAB, d_model=48, n_layers=2, n_seq=64, batch_size=8, dtype="float32", ffn_rank=8,
            ar_ssm_max_rank=8, ar_ssm_min_rank=2, htt_rank=8, learning_rate=3e-3, use_gradient_checkpointing=False,
            loss_chunk_size=0, stability_check_every=5)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two shared cores: OpenMP threads fighting other processes make tiny ops 5-10x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_data(DataSource("stdlib", max_bytes=300_000), VOCAB, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tiny():
    return Phase1Config(**TINY)


@pytest.fixture(scope="module")
def trained(tiny, data):
    """40 steps with two mid-run evaluations; records every callback."""
    steps: list[StepInfo] = []
    evals: list[EvalInfo] = []
    lines: list[str] = []
    result = train_and_evaluate(tiny, data, train_tokens=40 * TOKENS_PER_STEP, eval_tokens=4096, device="cpu",
                                on_step=steps.append, eval_points=[3 * TOKENS_PER_STEP, 10 * TOKENS_PER_STEP + 1],
                                on_eval=evals.append, return_model=True, progress=lines.append)
    return result, steps, evals, lines


def test_validation_loss_falls_clearly(tiny, data, trained):
    result, _, _, _ = trained
    before, ppl_before = evaluate(build_model(tiny), data, 4096, tiny, "cpu")  # the same init, untrained
    assert ppl_before == pytest.approx(math.exp(before))
    assert before > 6.0  # about ln(512) = 6.24 for an untrained model
    assert result.val_loss < before - 0.5, (before, result.val_loss)
    assert result.val_ppl == pytest.approx(math.exp(result.val_loss))
    # evaluate() on the returned model reproduces the result's final validation loss
    again, _ = evaluate(result.model, data, 4096, tiny, "cpu")
    assert again == pytest.approx(result.val_loss, rel=1e-6)


def test_on_step_called_every_step(trained):
    result, steps, _, _ = trained
    assert result.steps == 40 and result.train_tokens == 40 * TOKENS_PER_STEP
    assert [s.step for s in steps] == list(range(1, 41))
    assert [s.tokens for s in steps] == [i * TOKENS_PER_STEP for i in range(1, 41)]
    assert all(math.isfinite(s.loss) and s.grad_norm > 0 for s in steps)
    assert all(s.loss == pytest.approx(s.ce_loss + s.aux_loss, rel=1e-5) for s in steps)
    assert steps[-1].elapsed_s == pytest.approx(result.train_time_s, rel=0.05)
    # linear warmup over 5% of 40 steps = 2 steps, then cosine towards 10% of the peak
    assert [s.lr for s in steps[:2]] == [pytest.approx(1.5e-3), pytest.approx(3e-3)]
    assert all(a.lr >= b.lr for a, b in zip(steps[1:], steps[2:]))
    assert steps[-1].lr == pytest.approx(0.1 * 3e-3, rel=0.05)


def test_eval_points_give_on_eval_at_the_right_tokens(trained):
    result, _, evals, lines = trained
    # reported at the first step boundary at or past each point; the final evaluation ends the curve
    assert [e.tokens for e in evals] == [3 * TOKENS_PER_STEP, 11 * TOKENS_PER_STEP]
    assert [c["tokens"] for c in result.curve] == [3 * TOKENS_PER_STEP, 11 * TOKENS_PER_STEP, 40 * TOKENS_PER_STEP]
    assert result.curve[-1]["val_loss"] == result.val_loss
    for e in evals:
        assert e.val_ppl == pytest.approx(math.exp(e.val_loss))
        assert 1.0 <= e.repr_effective_rank <= 48.0
    assert evals[0].val_loss > result.val_loss
    assert any("eval at 1536 tokens" in line for line in lines)


def test_result_measurements(tiny, trained):
    result, _, _, _ = trained
    n_params = sum(result.param_counts.values())
    assert n_params == sum(p.numel() for p in result.model.parameters())
    assert result.peak_memory_kind == "cpu_tensor_bytes"
    assert result.peak_reserved_gib is None  # no caching allocator on CPU: nothing to report, nothing invented
    # parameters + gradients + two AdamW moments, all float32, are alive together after the first step
    assert result.peak_torch_gib * 2**30 >= 16 * n_params
    assert result.peak_torch_gib < 0.1
    first = result.diagnostics["first_step_s"]
    assert 0 < first < result.train_time_s
    assert result.tokens_per_s == pytest.approx((result.train_tokens - TOKENS_PER_STEP) / (result.train_time_s - first))
    assert result.eval_tokens == 4096
    d = result.diagnostics
    assert d["stability_checks"] == 40 // tiny.stability_check_every
    assert 0 < d["det_min"] < 1 and d["s1_max"] > 0 and d["s2_max"] > 0
    assert 0.0 <= d["grad_clip_fraction"] <= 1.0
    assert tiny.ar_ssm_min_rank <= d["effective_rank"] <= tiny.ar_ssm_max_rank
    assert 0.0 <= d["gate_sparsity"] <= 1.0
    assert "model" not in result.to_dict()


def test_same_seed_same_result_other_seed_differs(tiny, data):
    kw = dict(train_tokens=4 * TOKENS_PER_STEP, eval_tokens=2048, device="cpu")
    a = train_and_evaluate(tiny, data, **kw)
    b = train_and_evaluate(tiny, data, **kw)
    c = train_and_evaluate(tiny.replace(seed=1), data, **kw)
    assert a.val_loss == b.val_loss
    assert c.val_loss != a.val_loss


def test_exception_in_on_step_propagates(tiny, data):
    class Stop(Exception):
        pass

    seen = []

    def on_step(info):
        seen.append(info.step)
        if info.step == 3:
            raise Stop("trial pruned")

    with pytest.raises(Stop, match="trial pruned"):
        train_and_evaluate(tiny, data, train_tokens=20 * TOKENS_PER_STEP, eval_tokens=1024, device="cpu",
                           on_step=on_step)
    assert seen == [1, 2, 3]


def test_times_say_where_the_run_went_also_when_it_raises(tiny, data):
    import time

    times, evals = RunTimes(), []

    def on_eval(info):
        evals.append(time.perf_counter())
        if info.tokens > 3 * TOKENS_PER_STEP:
            raise RuntimeError("pruned after the second evaluation")

    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="pruned"):
        train_and_evaluate(tiny, data, train_tokens=10 * TOKENS_PER_STEP, eval_tokens=4096, device="cpu",
                           eval_points=[TOKENS_PER_STEP, 4 * TOKENS_PER_STEP], on_eval=on_eval, times=times)
    total = time.perf_counter() - t0
    assert len(evals) == 2 and times.build_s is not None
    assert 0.0 < times.build_s < evals[0] - t0  # built before the first evaluation ran
    assert 0.0 < times.eval_s and times.build_s + times.eval_s < total
    unbuilt = RunTimes()
    with pytest.raises(ConfigError):
        train_and_evaluate(tiny.replace(vocab_size=VOCAB * 2), data, train_tokens=TOKENS_PER_STEP, eval_tokens=1024,
                           device="cpu", times=unbuilt)
    assert unbuilt == RunTimes()  # rejected before anything was built


def test_exception_in_on_eval_propagates(tiny, data):
    def on_eval(info):
        raise RuntimeError(f"prune at {info.tokens}")

    with pytest.raises(RuntimeError, match=f"prune at {2 * TOKENS_PER_STEP}"):
        train_and_evaluate(tiny, data, train_tokens=10 * TOKENS_PER_STEP, eval_tokens=1024, device="cpu",
                           eval_points=[2 * TOKENS_PER_STEP], on_eval=on_eval)


def test_lns_rejected_before_building(data, monkeypatch):
    import model.lm

    def no_build(config):
        raise AssertionError("build_model must not be called")

    monkeypatch.setattr(model.lm, "build_model", no_build)
    cfg = Phase1Config(**{**TINY, "lns_enabled": True})
    with pytest.raises(ConfigError, match="lns_enabled"):
        train_and_evaluate(cfg, data, train_tokens=512, eval_tokens=512, device="cpu")


def test_mismatched_vocab_and_short_data_rejected(tiny, data):
    with pytest.raises(ConfigError, match="vocab_size: the config has 1024 but the data was tokenised for 512"):
        train_and_evaluate(tiny.replace(vocab_size=1024), data, train_tokens=512, eval_tokens=512, device="cpu")
    too_long = tiny.replace(n_seq=data.n_val_tokens + 10)
    with pytest.raises(DataError, match="validation tokens cannot fill one window"):
        train_and_evaluate(too_long, data, train_tokens=512, eval_tokens=512, device="cpu")
    with pytest.raises(ValueError, match="eval_points"):
        train_and_evaluate(tiny, data, train_tokens=512, eval_tokens=512, device="cpu", eval_points=[10_000])


def test_stability_monitor_is_wired(tiny, data):
    """A det threshold above a fresh layer's ~0.02 must stop training at the first due check."""
    steps = []
    unstable = tiny.replace(stability_threshold=0.5, stability_check_every=2)
    with pytest.raises(NumericalInstabilityError, match="det"):
        train_and_evaluate(unstable, data, train_tokens=6 * TOKENS_PER_STEP, eval_tokens=1024, device="cpu",
                           on_step=steps.append)
    assert len(steps) == 1  # step 2's check raised before its on_step
    off = unstable.replace(stability_monitoring_enabled=False)
    result = train_and_evaluate(off, data, train_tokens=4 * TOKENS_PER_STEP, eval_tokens=1024, device="cpu")
    assert result.diagnostics["stability_checks"] == 0 and result.diagnostics["det_min"] is None


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_on_cpu(tiny, data, dtype):
    result = train_and_evaluate(tiny.replace(dtype=dtype), data, train_tokens=3 * TOKENS_PER_STEP, eval_tokens=1024,
                                device="cpu")
    assert math.isfinite(result.val_loss) and result.val_loss < 8.0
    if dtype == "float16":
        assert result.diagnostics["loss_scale_final"] > 0  # the GradScaler ran


def test_checkpointing_and_chunked_loss_lower_the_measured_peak(tiny, data):
    """The CPU peak measurement sees what checkpointing saves, and the loss is the same function."""
    kw = dict(train_tokens=2 * TOKENS_PER_STEP, eval_tokens=1024, device="cpu")
    plain = train_and_evaluate(tiny, data, **kw)
    saving = train_and_evaluate(tiny.replace(use_gradient_checkpointing=True, loss_chunk_size=16), data, **kw)
    assert saving.peak_torch_gib < 0.8 * plain.peak_torch_gib, (saving.peak_torch_gib, plain.peak_torch_gib)
    assert saving.val_loss == pytest.approx(plain.val_loss, rel=1e-4)


def test_trainer_uses_the_param_groups_and_starts_the_output_bias_at_the_unigram(tiny, data):
    """The trainer's AdamW has model.optim's groups (rates, decay) and the output bias is set from the training
    tokens' counts before the first step."""
    import numpy as np

    from model.optim import param_groups
    from model.train import WEIGHT_DECAY, _Run

    run = _Run(tiny, data, torch.device("cpu"), steps=10, eval_tokens=4096, say=lambda line: None)
    got = {g["name"]: (g["initial_lr"], g["weight_decay"], len(g["params"])) for g in run.optimizer.param_groups}
    want = {g["name"]: (g["lr"], g["weight_decay"], len(g["params"]))
            for g in param_groups(run.model, tiny.learning_rate, WEIGHT_DECAY)}
    assert got == want
    assert got["embedding"][0] == pytest.approx(tiny.learning_rate * 8 * math.sqrt(tiny.d_model))
    counts = np.bincount(np.asarray(data.train), minlength=VOCAB).astype(np.float64) + 1.0
    expected = np.log(counts) - np.log(counts).mean()
    np.testing.assert_allclose(run.model.out_bias.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
