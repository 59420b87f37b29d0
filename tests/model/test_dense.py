"""model.dense / model.dense_config: the dense baseline's shape, parameter formula, causality and training by the
same trainer on real text (the stdlib sources)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from model.config import ConfigError
from model.data import DataRepeatWarning, DataSource, prepare_data, unigram_val_loss
from model.dense import build_dense_model
from model.dense_config import DenseConfig, dense_for, dense_param_counts
from model.train import evaluate, train_and_evaluate

# Its module-scoped fixture runs once per pytest-xdist process: keep the module's tests on one (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("dense")

VOCAB = 512


def tiny(**kw) -> DenseConfig:
    base = dict(vocab_size=VOCAB, d_model=48, n_layers=2, n_heads=3, n_seq=64, batch_size=8, dtype="float32",
                learning_rate=3e-3, loss_chunk_size=0)
    base.update(kw)
    return DenseConfig(**base)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_data(DataSource("stdlib", max_bytes=300_000), VOCAB, tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("kw", [dict(), dict(d_model=64, n_heads=4, n_layers=3, n_seq=33, vocab_size=101)],
                         ids=["tiny", "odd"])
def test_param_counts_match_formula(kw):
    config = tiny(**kw)
    model = build_dense_model(config)
    counts = model.param_counts()
    expected = dense_param_counts(config)
    assert counts == {k: v for k, v in expected.items() if k != "total"}
    assert expected["total"] == sum(p.numel() for p in model.parameters())


def test_shape_of_the_issue_baseline_is_205m_parameters():
    """V 50257, D 1024, 12 layers, L 2048: the plain transformer the team measured (205M parameters)."""
    total = dense_param_counts(DenseConfig())["total"]
    assert 204e6 < total < 206e6, total


def test_causal_and_chunked_loss_equals_full():
    torch.manual_seed(0)
    model = build_dense_model(tiny(n_seq=40)).eval()
    ids = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        out = model(ids).logits
        ids2 = ids.clone()
        ids2[:, 25:] = torch.randint(0, VOCAB, (2, 15))
        out2 = model(ids2).logits
    assert torch.allclose(out[:, :25], out2[:, :25], atol=1e-5)
    assert not torch.allclose(out[:, 25:], out2[:, 25:], atol=1e-3)
    targets = torch.randint(0, VOCAB, (2, 40))
    full = build_dense_model(tiny(n_seq=40, loss_chunk_size=0))(ids, targets).loss
    chunked = build_dense_model(tiny(n_seq=40, loss_chunk_size=7))(ids, targets).loss
    assert float(full.detach()) == pytest.approx(float(chunked.detach()), rel=1e-5)


def test_initial_loss_is_near_uniform():
    model = build_dense_model(tiny())
    ids, targets = torch.randint(0, VOCAB, (2, 4, 64))
    loss = float(model(ids, targets).ce_loss)
    assert abs(loss - math.log(VOCAB)) < 0.3, loss


def test_config_errors_name_field_and_range():
    with pytest.raises(ConfigError, match="n_heads: 5 does not divide d_model = 48"):
        tiny(n_heads=5)
    with pytest.raises(ConfigError, match="learning_rate"):
        tiny(learning_rate=0.0)
    with pytest.raises(ConfigError, match="unknown DenseConfig field.*did you mean 'n_heads'"):
        DenseConfig.from_dict({"n_head": 4})


def test_dense_for_takes_the_phase1_shape():
    shape = {"vocab_size": 2048, "d_model": 96, "n_layers": 3, "n_seq": 128, "batch_size": 4, "dtype": "float32",
             "learning_rate": 1e-3, "htt_rank": 8}
    config = dense_for(shape)
    assert (config.vocab_size, config.d_model, config.n_layers, config.n_seq, config.batch_size) == (2048, 96, 3, 128, 4)
    assert config.n_heads == 1 and config.learning_rate == 1e-3
    assert dense_for({"d_model": 1024}).n_heads == 16
    assert dense_for({"d_model": 1024}, n_heads=8).n_heads == 8


def test_trains_with_the_same_trainer_and_beats_unigram(data):
    config = tiny()
    before, _ = evaluate(build_dense_model(config), data, 4096, config, "cpu")
    unigram = unigram_val_loss(data, config.n_seq, 4096)
    assert unigram < before - 0.5, (unigram, before)  # the unigram floor is well below the untrained model
    result = train_and_evaluate(config, data, train_tokens=60 * 8 * 64, eval_tokens=4096, device="cpu")
    assert result.val_loss < unigram - 0.1, (before, unigram, result.val_loss)
    assert result.param_counts["attention"] == 2 * 4 * 48 * 48
    assert result.diagnostics["grad_clip_fraction"] >= 0.0
    assert 0 < result.epochs < 1


def test_a_run_longer_than_the_data_warns_and_records_epochs(data):
    config = tiny()
    tokens = 2 * data.n_train_tokens
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train_and_evaluate(config.replace(n_layers=1, d_model=16, n_heads=1), data,
                                    train_tokens=tokens, eval_tokens=64, device="cpu")
    assert result.epochs == pytest.approx(tokens / data.n_train_tokens, rel=0.01)
    assert any(issubclass(w.category, DataRepeatWarning) and "epochs" in str(w.message) for w in caught)


def _saved_bytes(model, ids, targets) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, targets).loss.backward()
    return total


def test_gradient_checkpointing_saves_memory_and_computes_the_same():
    torch.manual_seed(0)
    ids, targets = torch.randint(0, VOCAB, (2, 2, 64))
    plain, ckpt = build_dense_model(tiny(n_layers=3)), build_dense_model(tiny(n_layers=3, use_gradient_checkpointing=True))
    assert _saved_bytes(ckpt, ids, targets) < 0.5 * _saved_bytes(plain, ids, targets)
    for a, b in zip(plain.parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_gradient_norm_threshold_clips(data):
    small = train_and_evaluate(tiny(gradient_norm_threshold=1e-6), data, train_tokens=3 * 8 * 64, eval_tokens=64,
                               device="cpu")
    large = train_and_evaluate(tiny(gradient_norm_threshold=1e6), data, train_tokens=3 * 8 * 64, eval_tokens=64,
                               device="cpu")
    assert small.diagnostics["grad_clip_fraction"] == 1.0 and large.diagnostics["grad_clip_fraction"] == 0.0
    assert small.val_loss != large.val_loss
