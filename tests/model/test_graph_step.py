"""model/graph_step.py: the training step replayed from a CUDA graph trains exactly like the eager step (GPU tests,
skipped without CUDA), and the switch is refused off CUDA with a one-line error (CPU)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model.config import Phase1Config
from model.data import TokenData
from model.dense_config import DenseConfig
from model.fast import resolve_switches
from model.graph_step import GraphCaptureError, GraphedStep, assigned_between, module_tensor_attrs
from model.lm import build_model
from model.train import train_and_evaluate

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

V = 97
SMALL = dict(vocab_size=V, d_model=64, n_layers=2, n_seq=64, batch_size=4, ffn_rank=8, ar_ssm_max_rank=16,
             ar_ssm_min_rank=4, htt_rank=4, loss_chunk_size=16, learning_rate=3e-3,
             stability_check_every=1)  # fmt: skip
CASES = {  # the presets' two step shapes: checkpointed blocks and mixers (8gb, 10gb), nothing checkpointed (24gb)
    "8gb_like": dict(use_gradient_checkpointing=True, checkpoint_ar_ssm=True),
    "24gb_like": dict(use_gradient_checkpointing=False, checkpoint_ar_ssm=False),
}
# Per-dtype tolerance on each step's loss, relative: the replay runs the eager step's kernels on the same inputs, so
# only a different cuBLAS algorithm on the capture stream could move a result (fp32: rounding; bf16: one bf16 ulp).
RTOL = {"float32": 1e-4, "bfloat16": 1e-2}
STEPS = 8


def patterned_data(n_train: int = 40_000, n_val: int = 4_000, seed: int = 0) -> TokenData:
    """Token ids that repeat a period-13 pattern with 10% random ids: learnable, so the losses fall and every step's
    update shows in the next step's loss."""
    rng = np.random.default_rng(seed)

    def ids(n: int) -> np.ndarray:
        x = (np.arange(n) % 13) * 7 % V
        noise = rng.random(n) < 0.1
        x[noise] = rng.integers(0, V, int(noise.sum()))
        return x.astype(np.uint16)

    values = dict(train=ids(n_train), val=ids(n_val), vocab_size=V, tokenizer_path="", corpus_hash="patterned",
                  eot_id=0, n_learned_tokens=V, n_train_docs=1, n_val_docs=1, n_bytes=0, skipped_files=0,
                  cache_path="", from_cache=False, prepare_time_s=0.0)  # fmt: skip
    return TokenData(**{f.name: values[f.name] for f in dataclasses.fields(TokenData)})


def run(config, graph: bool, compile_step: bool = False):
    """Per-step losses and the result of STEPS steps with one evaluation after step 4 (the graph is released for it
    and captured again at step 5)."""
    steps: list = []
    tokens = config.batch_size * config.n_seq
    r = train_and_evaluate(config, patterned_data(), train_tokens=STEPS * tokens, eval_tokens=2 * config.n_seq,
                           device="cuda", on_step=steps.append, eval_points=[4 * tokens], cuda_graph_step=graph,
                           compile_step=compile_step)  # fmt: skip
    return [s.loss for s in steps], [s.grad_norm for s in steps], r


def assert_same_trajectory(eager, graphed, rtol: float) -> None:
    (loss_e, norm_e, r_e), (loss_g, norm_g, r_g) = eager, graphed
    assert loss_e[-1] < loss_e[0]  # it trained: each step's update reaches the next step's loss
    for step, (a, b) in enumerate(zip(loss_e, loss_g, strict=True), start=1):
        assert b == pytest.approx(a, rel=rtol), f"step {step}: eager {a:.6f}, graph {b:.6f}"
    for a, b in zip(norm_e, norm_g, strict=True):  # the monitor clips the graph's own gradients
        assert b == pytest.approx(a, rel=10 * rtol)
    assert r_g.val_loss == pytest.approx(r_e.val_loss, rel=rtol)
    # two captures (step 3, and step 5 after the evaluation), every later step replayed
    assert r_g.diagnostics["cuda_graph_captures"] == 2
    assert r_g.diagnostics["cuda_graph_replays"] == STEPS - 2
    for key in ("s1_max", "s2_max"):  # Schatten norms read last_gate_mean: the replay's, not a stale one
        if r_e.diagnostics.get(key) is not None:
            assert r_g.diagnostics[key] == pytest.approx(r_e.diagnostics[key], rel=10 * rtol)


# --- CPU ---------------------------------------------------------------------------------------------------------


def test_switch_is_refused_off_cuda_in_one_line():
    with pytest.raises(ValueError, match="cuda_graph_step: CUDA graphs need a CUDA device") as err:
        resolve_switches("cpu", None, None, True)
    assert "\n" not in str(err.value)
    assert resolve_switches("cpu", None, None, None) == (False, False, False)
    assert resolve_switches("cpu", True, True, False) == (True, True, False)
    assert resolve_switches("cuda", None, None, None)[2] is False  # off by default until the H100 run
    with pytest.raises(ValueError, match="cuda_graph_step"):
        train_and_evaluate(Phase1Config(**SMALL), patterned_data(), train_tokens=256, eval_tokens=64, device="cpu",
                           cuda_graph_step=True)  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA error")
def test_graphed_step_needs_cuda():
    with pytest.raises(GraphCaptureError, match="need a CUDA device"):
        GraphedStep(torch.nn.Linear(2, 2), lambda x: (x,))


def test_forward_side_effects_found_are_the_mixers_gate_means():
    """What a replay must re-assign: a real forward assigns each AR-SSM's last_gate_mean (the stability monitor's
    Schatten input) and nothing else; a second forward assigns them again (new tensors)."""
    c = Phase1Config(**SMALL, **CASES["8gb_like"])
    model = build_model(c).train()
    ids = torch.randint(0, V, (2, c.n_seq + 1))
    before = module_tensor_attrs(model)
    model(ids[:, :-1], ids[:, 1:]).loss.backward()
    first = assigned_between(before, module_tensor_attrs(model))
    assert sorted(name for _, name, _ in first) == ["last_gate_mean"] * c.n_layers
    assert {id(m) for m, _, _ in first} == {id(b.mixer) for b in model.blocks}
    after_first = module_tensor_attrs(model)
    model(ids[:, :-1], ids[:, 1:])
    assert len(assigned_between(after_first, module_tensor_attrs(model))) == c.n_layers
    assert assigned_between(after_first, after_first) == []


# --- GPU ---------------------------------------------------------------------------------------------------------


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", list(CASES))
def test_graph_replayed_phase1_steps_match_eager(case, dtype):
    c = Phase1Config(**SMALL, **CASES[case], dtype=dtype)
    assert_same_trajectory(run(c, graph=False), run(c, graph=True), RTOL[dtype])


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("checkpointing", [False, True])
def test_graph_replayed_dense_steps_match_eager(checkpointing):
    c = DenseConfig(vocab_size=V, d_model=64, n_layers=2, n_heads=2, n_seq=64, batch_size=4, loss_chunk_size=16,
                    learning_rate=3e-3, dtype="float32", use_gradient_checkpointing=checkpointing)  # fmt: skip
    assert_same_trajectory(run(c, graph=False), run(c, graph=True), RTOL["float32"])


@gpu
@pytest.mark.gpu
@pytest.mark.slow
def test_graph_replay_of_the_compiled_step_matches_the_compiled_step():
    """compile_step + cuda_graph_step (bench variant compile_graphs): the compiled blocks inside the captured graph
    give the compiled eager step's losses (compilation and autotuning happen in the two warm-up steps)."""
    torch._dynamo.reset()
    c = Phase1Config(**SMALL, **CASES["8gb_like"], dtype="bfloat16")
    compiled = run(c, graph=False, compile_step=True)
    assert_same_trajectory(compiled, run(c, graph=True, compile_step=True), RTOL["bfloat16"])


@gpu
@pytest.mark.gpu
def test_a_host_read_inside_the_step_fails_the_capture_loudly():
    """No silent eager fallback: a step that reads a value back to the host cannot be captured, and says so in one
    line."""
    lin = torch.nn.Linear(8, 1).cuda()

    def step(x):
        loss = lin(x.float()).square().mean()
        loss.backward()
        if float(loss) > 1e9:  # a host read: synchronises, which a capture forbids
            raise AssertionError("unreachable")
        return (loss.detach(),)

    graphed = GraphedStep(lin, step, warmup_steps=1)
    x = torch.randn(4, 8, device="cuda")
    graphed(x)  # eager warm-up
    with pytest.raises(GraphCaptureError, match="capturing the training step failed") as err:
        graphed(x)
    assert "\n" not in str(err.value)
    assert not graphed.live and all(p.grad is None for p in lin.parameters())
