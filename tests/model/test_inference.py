"""model.inference: the measured inference pass, on real tiny models and real stdlib text (CPU). It scores what
model.evaluate.evaluate scores, its rate is the scored tokens over its own seconds, and its tensor-bytes peak counts
the model's own tensors (float or LNS codes) plus what the pass allocates."""

from __future__ import annotations

import pytest
import torch

from model.data import DataSource, prepare_data
from model.evaluate import evaluate
from model.inference import measure_inference
from model.lm import build_model
from model.lns_linear import convert_to_lns
from model.units import GIB
from tests.model.tiny import cfg

VOCAB = 320


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_data(DataSource("stdlib", max_bytes=200_000), VOCAB, tmp_path_factory.mktemp("cache"))


def _model_bytes(model: torch.nn.Module) -> int:
    return sum(t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers()])


@pytest.mark.parametrize("lns", [False, True], ids=["float", "lns"])
def test_the_pass_scores_what_evaluate_scores_and_measures_itself(data, lns):
    config = cfg(vocab_size=VOCAB, n_seq=31, batch_size=3, lns_block_size_m=16, lns_block_size_n=16)
    torch.manual_seed(0)
    model = build_model(config)
    if lns:
        assert convert_to_lns(model, config) > 0
    eval_tokens = 31 * 7  # 7 windows: batches of 3, 3 and an odd 1
    m = measure_inference(model, data, eval_tokens, config, "cpu")
    loss, ppl = evaluate(model, data, eval_tokens, config, "cpu")
    assert (m.val_loss, m.val_ppl) == pytest.approx((loss, ppl), rel=1e-6)
    assert m.eval_tokens == eval_tokens and m.seconds > 0
    assert m.tokens_per_s == pytest.approx(m.eval_tokens / m.seconds)
    assert m.peak_kind == "cpu_tensor_bytes"
    assert m.peak_gib * GIB > _model_bytes(model)  # the model's tensors, plus the pass's activations


def test_lns_weights_make_the_inference_footprint_smaller(data):
    """The same trained weights, float vs 8-bit LNS codes, at a width where the linears' weights dominate: the LNS
    model's pass peaks lower (the torch reference decodes one weight at a time, so less than all of them)."""
    config = cfg(vocab_size=VOCAB, d_model=128, ffn_rank=64, n_seq=16, batch_size=1, lns_bits=8)
    torch.manual_seed(0)
    model = build_model(config)
    flt = measure_inference(model, data, 16, config, "cpu")
    convert_to_lns(model, config)
    lns = measure_inference(model, data, 16, config, "cpu")
    print(f"eval peak float {flt.peak_gib * GIB / 1024:.0f} KiB, LNS {lns.peak_gib * GIB / 1024:.0f} KiB")
    assert lns.peak_gib < flt.peak_gib
