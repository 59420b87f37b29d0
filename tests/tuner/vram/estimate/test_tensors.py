"""tuner.vram.estimate.tensors: the tensor-bytes timeline of one training step matches a real CPU training peak.

Tolerance of the CPU validation: the predicted tensor peak is within 5 % of the peak that model.train measures with
its TensorMemoryTracker (kind "cpu_tensor_bytes") over two real training steps and one evaluation of tiny models.
(The tracker sees every storage an op returns, not scratch freed inside a kernel, and does not round to the CUDA
allocator's 512-byte blocks that the prediction includes; at these shapes those two effects are below 1 %.)
"""

from __future__ import annotations

import pytest

from model.config import Phase1Config
from tests.tuner.vram.estimate.tiny import TINY
from tuner.vram.estimate.allocator import BLOCK
from tuner.vram.estimate.predict import estimate
from tuner.vram.estimate.tensors import tensor_timeline

TOLERANCE = 0.05


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(dict(), id="bf16-ckpt"),
        pytest.param(dict(dtype="float32", use_gradient_checkpointing=False), id="fp32-nockpt"),
        pytest.param(
            dict(
                use_gradient_checkpointing=False,
                checkpoint_ar_ssm=True,
                checkpoint_htt=True,
                loss_chunk_size=0,
                head="low_rank",
                head_rank=32,
                htt_num_cores=3,
            ),
            id="bf16-ckpt-mixer-htt-unchunked-lowrank-3cores",
        ),
    ],
)
def test_tensor_bytes_match_a_real_cpu_training_peak(fields):
    from model.train import train_and_evaluate
    from tuner.vram.calibrate import synthetic_token_data

    cfg = Phase1Config(**{**TINY, **fields})
    data = synthetic_token_data(cfg.vocab_size, 4096, seed=1)
    result = train_and_evaluate(
        cfg, data, train_tokens=2 * cfg.batch_size * cfg.n_seq, eval_tokens=cfg.n_seq, device="cpu"
    )
    assert result.peak_memory_kind == "cpu_tensor_bytes"
    predicted = estimate(cfg, device="cpu").tensor_gib
    assert predicted == pytest.approx(result.peak_torch_gib, rel=TOLERANCE), (predicted, result.peak_torch_gib)


def _activation_gib(e) -> float:
    return sum(
        v
        for k, v in e.components.items()
        if k.startswith(("activations", "recomputed", "logits", "backward_temp", "forward_temp"))
    )


@pytest.mark.parametrize("flag", ["use_gradient_checkpointing", "checkpoint_ar_ssm", "checkpoint_htt"])
def test_each_checkpoint_flag_lowers_the_activation_part(flag):
    off = Phase1Config(
        **{
            **TINY,
            "use_gradient_checkpointing": False,
            "checkpoint_ar_ssm": False,
            "checkpoint_htt": False,
            "n_layers": 6,
            "vocab_size": 64,
            "loss_chunk_size": 16,
        }
    )
    on = off.replace(**{flag: True})
    e_off, e_on = estimate(off, device="cpu"), estimate(on, device="cpu")
    assert _activation_gib(e_on) < _activation_gib(e_off)
    assert e_on.tensor_gib < e_off.tensor_gib


def test_the_timeline_peak_is_its_largest_moment_and_every_part_is_whole_blocks():
    cfg = Phase1Config(**TINY)
    tl, _ = tensor_timeline(cfg, "cuda")
    assert tl.peak == max(tl.moments.values()) == tl.moments[tl.peak_moment] == sum(tl.peak_parts.values())
    assert {"parameters", "optimizer_state", "batch"} <= set(tl.peak_parts)
    assert tl.peak_parts["optimizer_state"] >= 2 * tl.peak_parts["parameters"]  # AdamW: two moments per parameter
    assert tl.peak_parts["parameters"] % BLOCK == 0 and tl.peak_parts["batch"] % BLOCK == 0
    longer, _ = tensor_timeline(cfg.replace(n_seq=2 * cfg.n_seq), "cuda")
    assert longer.peak > tl.peak and longer.peak_parts["parameters"] == tl.peak_parts["parameters"]
