"""model/fast.py: the compiled step gives the eager step's loss and gradients (Phase 1 with and without
checkpointing, chunked loss; the dense baseline), and a block compiles as one graph (no graph break)."""

from __future__ import annotations

import pytest
import torch

from model.config import Phase1Config
from model.dense import build_dense_model
from model.dense_config import DenseConfig
from model.fast import compile_for_speed, resolve_switches
from model.lm import Block, build_model

slow = pytest.mark.slow  # inductor compiles C++ on the CPU: tens of seconds per case

BASE = dict(vocab_size=97, d_model=32, n_layers=2, n_seq=16, ffn_rank=4, ar_ssm_max_rank=8, ar_ssm_min_rank=2,
            htt_rank=4, batch_size=2, loss_chunk_size=8)  # fmt: skip
CASES = {
    "8gb_like": dict(use_gradient_checkpointing=True, checkpoint_ar_ssm=True),
    "24gb_like": dict(use_gradient_checkpointing=False, checkpoint_ar_ssm=False),
}


def step(model, c, seed=0, autocast=True):
    """Loss and every parameter's gradient of one training step on a fixed batch (bf16 autocast or fp32)."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, c.vocab_size, (c.batch_size, c.n_seq + 1), generator=g)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(seq[:, :-1], seq[:, 1:])
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same_step(eager, fast, c):
    """Under bf16 autocast the compiled step may round differently (inductor fuses casts away, reorders sums), so
    it is held to the eager step's own accuracy: against the fp32 eager step, its error is at most twice the eager
    bf16 step's error (plus 0.2% of the gradient's norm), for the loss and for every parameter's gradient."""
    for seed in (0, 1):  # the second call runs the already compiled graphs
        loss_ref, grads_ref = step(eager, c, seed, autocast=False)
        loss_e, grads_e = step(eager, c, seed)
        loss_f, grads_f = step(fast, c, seed)
        assert abs(loss_f - loss_ref) <= 2 * abs(loss_e - loss_ref) + 2e-3 * abs(loss_ref)
        for name, ref in grads_ref.items():
            err_e, err_f = (float((gr[name] - ref).norm()) for gr in (grads_e, grads_f))
            assert err_f <= 2 * err_e + 2e-3 * float(ref.norm()), f"{name}: compiled {err_f:.3g}, eager {err_e:.3g}"


@slow
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_phase1_step_matches_eager(case):
    torch._dynamo.reset()
    c = Phase1Config(**BASE, **CASES[case])
    eager, fast = build_model(c).train(), build_model(c).train()
    compile_for_speed(fast)
    assert fast.ce_fn is not eager.ce_fn
    assert_same_step(eager, fast, c)


@slow
def test_compiled_dense_step_matches_eager():
    torch._dynamo.reset()
    c = DenseConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=2, n_seq=16, batch_size=2, loss_chunk_size=8)
    eager, fast = build_dense_model(c).train(), build_dense_model(c).train()
    compile_for_speed(fast)
    assert_same_step(eager, fast, c)


@slow
@pytest.mark.parametrize("checkpoint_ar_ssm", [False, True])
def test_a_block_is_one_graph(checkpoint_ar_ssm):
    """fullgraph=True raises on any graph break: the block (norms, gates, scan, conv, FFN) traces whole, with its
    mixer checkpointed too (the 8gb preset's setting: no attribute write inside the checkpoint)."""
    torch._dynamo.reset()
    c = Phase1Config(**BASE, checkpoint_ar_ssm=checkpoint_ar_ssm)
    block = Block(c).train()
    x = torch.randn(2, 16, 32, requires_grad=True)
    compiled = torch.compile(block, fullgraph=True, dynamic=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = compiled(x)[0]
        y_ref = block(x)[0]
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)
    assert block.mixer.last_gate_mean is not None and block.mixer.last_gate_mean.shape == (c.ar_ssm_max_rank,)


def test_rejects_a_model_without_blocks():
    with pytest.raises(TypeError, match="no `blocks`"):
        compile_for_speed(torch.nn.Linear(2, 2))


@slow
def test_trainer_compile_step_trains_like_eager(tmp_path):
    """train_and_evaluate(compile_step=True) on real text runs compiled graphs and gives the same per-step losses as
    the eager trainer (fp32, so only summation order differs); its evaluation runs eagerly."""
    from torch._dynamo.utils import counters  # private, tests only: proves compiled graphs ran

    from model.data import DataSource, prepare_data
    from model.train import train_and_evaluate

    torch._dynamo.reset()
    counters.clear()
    data = prepare_data(DataSource("stdlib", max_bytes=100_000), 300, tmp_path)
    c = Phase1Config(**{**BASE, "vocab_size": 300, "dtype": "float32", "learning_rate": 3e-3})
    losses: dict[bool, list[float]] = {}
    for compiled in (False, True):
        steps: list = []
        r = train_and_evaluate(c, data, train_tokens=6 * 32, eval_tokens=64, device="cpu", on_step=steps.append,
                               compile_step=compiled)  # fmt: skip
        losses[compiled] = [s.loss for s in steps] + [r.val_loss]
        assert (counters["stats"]["unique_graphs"] > 0) == compiled  # eager made none; compiled did compile
        assert r.peak_memory_kind == ("unmeasured_compiled_cpu" if compiled else "cpu_tensor_bytes")
    assert losses[True][-1] < losses[True][0]
    for a, b in zip(losses[False], losses[True], strict=True):
        assert abs(a - b) <= 1e-3 * abs(a)


def test_switch_defaults_are_off_until_measured_and_never_on_cpu():
    assert resolve_switches("cpu", None, None) == (False, False, False)
    assert resolve_switches("cuda", None, None) == (False, False, False)  # flip in model/fast.py after the H100 run
    assert resolve_switches("cpu", True, None) == (True, False, False)
    assert resolve_switches("cuda", False, True, True) == (False, True, True)


@slow
def test_compiled_fused_loss_gradient_matches_eager():
    """use_fused_loss(compiled=True): the compiled functional softmax gradient gives the in-place eager one's loss
    and head gradients (fp32: rounding only), on a ragged last chunk and ignored targets."""
    from model.loss import IGNORE_INDEX, linear_cross_entropy, softmax_xent_grad, softmax_xent_grad_functional

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    h, w, b = torch.randn(37, 16, generator=g), torch.randn(50, 16, generator=g) * 0.5, torch.randn(50, generator=g)
    t = torch.randint(0, 50, (37,), generator=g)
    t[3] = IGNORE_INDEX
    out = {}
    for name, fn in (("eager", softmax_xent_grad), ("compiled", torch.compile(softmax_xent_grad_functional))):
        leaves = [x.clone().requires_grad_(True) for x in (h, w, b)]
        loss = linear_cross_entropy(leaves[0], leaves[1], leaves[2], t, 16, fn)
        out[name] = (loss, *torch.autograd.grad(loss, leaves))
    for name, e, c in zip(("loss", "dh", "dw", "db"), out["eager"], out["compiled"], strict=True):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
