"""Phase1LM end to end: causality, parameter accounting, each setting's effect, checkpointing and chunked loss
(same numbers, less memory, measured), heads, autocast, and that a tiny model learns a fixed batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from model.ar_ssm import ARSSM
from model.config import Phase1Config
from model.lm import LMOutput, build_model, expected_param_counts


def cfg(**kw) -> Phase1Config:
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_seq=17, ffn_rank=4, ar_ssm_max_rank=8,
                ar_ssm_min_rank=2, htt_rank=4, loss_chunk_size=0, use_gradient_checkpointing=False,
                batch_size=2)
    base.update(kw)
    return Phase1Config(**base)


def batch(c: Phase1Config, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, c.vocab_size, (c.batch_size, c.n_seq + 1), generator=g)
    return seq[:, :-1], seq[:, 1:]


def live_bytes_after(fn):
    """(fn(), bytes the CPU allocator holds net after fn) - allocations minus frees recorded by the profiler,
    i.e. what the forward keeps alive for the backward plus its outputs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    return out, sum(e.self_cpu_memory_usage for e in prof.events())


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


# --- causality -----------------------------------------------------------------------------------

CAUSAL_CASES = {
    "plain-fused_off": dict(ar_ssm_use_fused_scan=False),
    "plain-fused_on": dict(ar_ssm_use_fused_scan=True),
    "ckpt_all-fused_on": dict(use_gradient_checkpointing=True, checkpoint_ar_ssm=True, checkpoint_htt=True),
    "ckpt_block-fused_off-low_rank_head": dict(use_gradient_checkpointing=True, ar_ssm_use_fused_scan=False,
                                              head="low_rank", head_rank=8),
    "3_cores-chunked": dict(htt_num_cores=3, loss_chunk_size=5),
}


def _assert_causal(model, c):
    ids, _ = batch(c)
    model.train()
    out1 = model(ids)
    for t in (1, c.n_seq - 1):
        ids2 = ids.clone()
        ids2[:, t:] = (ids2[:, t:] + 1 + torch.arange(c.n_seq - t)) % c.vocab_size
        out2 = model(ids2)
        torch.testing.assert_close(out1.logits[:, :t], out2.logits[:, :t], rtol=0, atol=1e-5)
        assert (out1.logits[:, t:] - out2.logits[:, t:]).abs().amax(-1).min() > 1e-4, t
    out2.logits.float().sum().backward()  # the checkpointed graph is a real one


@pytest.mark.parametrize("changes", CAUSAL_CASES.values(), ids=CAUSAL_CASES.keys())
def test_causal_future_tokens_do_not_change_past_logits(changes):
    c = cfg(**changes)
    _assert_causal(build_model(c), c)


def test_causal_with_triton_scan_through_interpreter(monkeypatch):
    """The fused (Triton) scan forced on CPU through TRITON_INTERPRET=1 (tests/conftest.py sets it)."""
    calls = []

    def triton_backend(self, x):
        calls.append(1)
        return "triton"

    c = cfg(n_layers=1, n_seq=9, use_gradient_checkpointing=True)
    ref_model = build_model(c)
    ids, targets = batch(c)
    ref = ref_model(ids, targets).loss
    monkeypatch.setattr(ARSSM, "scan_backend", triton_backend)
    model = build_model(c)
    _assert_causal(model, c)
    assert calls, "the Triton backend was never selected"
    torch.testing.assert_close(model(ids, targets).loss, ref, rtol=1e-5, atol=1e-5)


# --- parameters ----------------------------------------------------------------------------------

PARAM_CASES = {
    "tied-2": {}, "tied-3-nophase": dict(htt_num_cores=3, htt_phase_encoding=False),
    "low_rank": dict(head="low_rank", head_rank=8), "min_eq_max": dict(ar_ssm_min_rank=8),
}


@pytest.mark.parametrize("changes", PARAM_CASES.values(), ids=PARAM_CASES.keys())
def test_param_counts_match_formulas_and_total(changes):
    c = cfg(**changes)
    m = build_model(c)
    counts = m.param_counts()
    expected = expected_param_counts(c)
    assert set(counts) == {"embedding", "ar_ssm", "ffn", "head", "norm"}
    assert counts == {k: v for k, v in expected.items() if k != "total"}
    assert sum(counts.values()) == expected["total"] == sum(p.numel() for p in m.parameters())


SETTING_CHANGES = {
    "ar_ssm_max_rank": dict(ar_ssm_max_rank=16), "ar_ssm_min_rank": dict(ar_ssm_min_rank=4),
    "ar_ssm_gate_hidden_dim": dict(ar_ssm_gate_hidden_dim=24), "htt_rank": dict(htt_rank=8),
    "htt_num_cores": dict(htt_num_cores=3), "htt_phase_encoding": dict(htt_phase_encoding=False),
    "ffn_rank": dict(ffn_rank=9), "head": dict(head="low_rank"), "n_layers": dict(n_layers=3),
}


@pytest.mark.parametrize("changes", SETTING_CHANGES.values(), ids=SETTING_CHANGES.keys())
def test_each_setting_changes_param_count_exactly_as_predicted(changes):
    base, other = cfg(), cfg(**changes)
    measured = sum(p.numel() for p in build_model(other).parameters()) - \
        sum(p.numel() for p in build_model(base).parameters())
    predicted = expected_param_counts(other)["total"] - expected_param_counts(base)["total"]
    assert measured == predicted != 0


def test_head_rank_changes_low_rank_head():
    a, b = cfg(head="low_rank", head_rank=4), cfg(head="low_rank", head_rank=12)
    diff = build_model(b).param_counts()["head"] - build_model(a).param_counts()["head"]
    assert diff == 8 * (32 + 97) == expected_param_counts(b)["head"] - expected_param_counts(a)["head"]


# --- loss ----------------------------------------------------------------------------------------

def test_loss_is_ce_plus_weighted_gate_l1():
    c = cfg(ar_ssm_l1_regularization=1e-3)
    m = build_model(c)
    ids, targets = batch(c)
    out = m(ids, targets)
    assert isinstance(out, LMOutput)
    ce = F.cross_entropy(out.logits.reshape(-1, c.vocab_size), targets.reshape(-1))
    torch.testing.assert_close(out.ce_loss, ce)
    gate_l1s = [blk.mixer(blk.norm1(x))[1] for blk, x in zip(m.blocks, _block_inputs(m, ids))]
    torch.testing.assert_close(out.aux_loss, 1e-3 * torch.stack(gate_l1s).sum())
    torch.testing.assert_close(out.loss, out.ce_loss + out.aux_loss)


def _block_inputs(m, ids):
    seen = []
    hooks = [blk.register_forward_pre_hook(lambda mod, args: seen.append(args[0])) for blk in m.blocks]
    with torch.no_grad():
        m(ids)
    for h in hooks:
        h.remove()
    return seen


def test_l1_weight_changes_aux_loss_and_gate_gradient():
    ids, targets = batch(cfg())
    outs, gate_grads = [], []
    for l1 in (1e-3, 1e-2):
        m = build_model(cfg(ar_ssm_l1_regularization=l1))
        out = m(ids, targets)
        out.aux_loss.backward()
        outs.append(out)
        gate_grads.append(m.blocks[0].mixer.gate[2].bias.grad.clone())
    torch.testing.assert_close(outs[1].ce_loss, outs[0].ce_loss)
    torch.testing.assert_close(outs[1].aux_loss, 10 * outs[0].aux_loss)
    assert outs[0].aux_loss > 0 and gate_grads[0].abs().max() > 0
    torch.testing.assert_close(gate_grads[1], 10 * gate_grads[0])


@pytest.mark.parametrize("chunk", [1, 4, 5, 16])
def test_chunked_ce_equals_unchunked_with_gradients(chunk):
    c = cfg()
    ids, targets = batch(c)
    full = build_model(c)
    out_full = full(ids, targets)
    out_full.loss.backward()
    chunked = build_model(c.replace(loss_chunk_size=chunk))
    out_chunk = chunked(ids, targets)
    out_chunk.loss.backward()
    assert out_chunk.logits is None and out_full.logits.shape == (2, 17, 97)
    torch.testing.assert_close(out_chunk.ce_loss, out_full.ce_loss, rtol=1e-6, atol=1e-6)
    for name, g in grads(full).items():
        torch.testing.assert_close(grads(chunked)[name], g, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("head", ["tied", "low_rank"])
def test_chunked_ce_holds_less_memory_measured(head):
    c = cfg(vocab_size=2048, n_seq=64, batch_size=4, head=head, head_rank=8)
    ids, targets = batch(c)
    live = {}
    for chunk in (0, 16):
        m = build_model(c.replace(loss_chunk_size=chunk))
        out, live[chunk] = live_bytes_after(lambda: m(ids, targets))
        out.loss.backward()
        del out
    logits_bytes = 4 * 64 * 2048 * 4
    assert live[0] - live[16] > logits_bytes, live  # unchunked keeps [B, L, V] logits and their log-softmax


def test_tied_head_is_scaled_table_product_and_low_rank_head_is_two_maps():
    c = cfg()
    m = build_model(c)
    ids, _ = batch(c)
    with torch.no_grad():
        bias = torch.randn(97)
        m.out_bias.copy_(bias)
        out = m(ids)
        table = m.embed.table()
        torch.testing.assert_close(out.logits, out.hidden @ table.t() / 32 ** 0.5 + bias, rtol=1e-5, atol=1e-5)
        assert m.param_counts()["head"] == 97  # the output bias; the table is the embedding's
        lr = build_model(c.replace(head="low_rank", head_rank=8))
        lr.out_bias.copy_(bias)
        out = lr(ids)
        torch.testing.assert_close(out.logits,
                                   out.hidden @ lr.head.down.weight.t() @ lr.head.up.weight.t() + bias)
        assert lr.param_counts()["head"] == 97 + 32 * 8 + 8 * 97


@pytest.mark.parametrize("head", ["tied", "low_rank"])
def test_output_bias_is_a_trained_vector_of_size_v_set_from_unigram_counts(head):
    from model.lm import unigram_counts

    c = cfg(head=head, head_rank=8)
    m = build_model(c)
    assert m.out_bias.shape == (97,) and torch.equal(m.out_bias, torch.zeros(97))  # zero until the trainer sets it
    tokens = np.array([3] * 50 + [5] * 5 + [7] * 500, dtype=np.uint16)
    counts = unigram_counts(tokens, 97, chunk=64)  # several chunks
    assert counts[3] == 50 and counts[5] == 5 and counts[7] == 500 and counts.sum() == 555
    ids, targets = batch(c)
    before = m(ids).logits
    m.init_output_bias(counts)
    after = m(ids).logits
    b = m.out_bias.detach()
    # centred log-frequencies (add-one): differences are log count ratios, the mean is 0
    assert b[7] - b[5] == pytest.approx(math.log(501 / 6), rel=1e-5)
    assert b.mean().abs() < 1e-5
    torch.testing.assert_close(after - before, b.expand_as(after))  # the bias is added to every position's logits
    m(ids, targets).loss.backward()
    assert m.out_bias.grad is not None and m.out_bias.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="counts"):
        m.init_output_bias(torch.ones(96))


def test_tied_head_builds_table_in_chunks(monkeypatch):
    import model.lm as lm

    c = cfg()
    m = build_model(c)
    ids, targets = batch(c)
    ref = m(ids, targets).ce_loss
    rows = []
    real = m.embed.table
    monkeypatch.setattr(lm, "TABLE_CHUNK_ROWS", 10)
    monkeypatch.setattr(m.embed, "table", lambda s, e: rows.append(e - s) or real(s, e))
    torch.testing.assert_close(m(ids, targets).ce_loss, ref)
    assert max(rows) == 10 and sum(rows) == 97


# --- checkpointing -------------------------------------------------------------------------------

CKPT = {
    "block": dict(use_gradient_checkpointing=True),
    "ar_ssm": dict(checkpoint_ar_ssm=True),
    "htt": dict(checkpoint_htt=True),
}


@pytest.mark.parametrize("changes", CKPT.values(), ids=CKPT.keys())
def test_checkpointing_same_loss_and_grads_and_less_memory(changes):
    c = cfg(n_seq=32, batch_size=4)
    ids, targets = batch(c)
    plain = build_model(c)
    out_plain, live_plain = live_bytes_after(lambda: plain(ids, targets))
    out_plain.loss.backward()
    ck = build_model(c.replace(**changes))
    out_ck, live_ck = live_bytes_after(lambda: ck(ids, targets))
    out_ck.loss.backward()
    assert torch.equal(out_ck.loss, out_plain.loss)
    for name, g in grads(plain).items():
        torch.testing.assert_close(grads(ck)[name], g, rtol=1e-6, atol=1e-7, msg=name)
    assert live_ck < live_plain, (live_ck, live_plain)
    if "use_gradient_checkpointing" in changes:
        assert live_ck < 0.5 * live_plain, (live_ck, live_plain)


def test_checkpointing_is_off_in_eval_and_under_no_grad(monkeypatch):
    import model.lm as lm

    c = cfg(use_gradient_checkpointing=True, checkpoint_ar_ssm=True, checkpoint_htt=True)
    m = build_model(c)
    ids, targets = batch(c)
    calls = []
    real = lm.checkpoint
    monkeypatch.setattr(lm, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    m.eval()
    with torch.no_grad():
        m(ids, targets)
    assert not calls
    m.train()
    m(ids, targets)
    assert len(calls) == 1 + 2 * c.n_layers  # htt + each block + each mixer inside it


# --- dtype, diagnostics, training ----------------------------------------------------------------

@pytest.mark.parametrize("changes", [{}, dict(use_gradient_checkpointing=True, loss_chunk_size=5, htt_num_cores=3)],
                         ids=["plain", "ckpt-chunked-3cores"])
def test_runs_under_cpu_autocast_bf16(changes):
    c = cfg(**changes)
    m = build_model(c)
    ids, targets = batch(c)
    ref = m(ids, targets).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(ids, targets)
    out.loss.backward()
    assert all(p.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in m.parameters())
    assert abs(out.loss.item() - ref.item()) < 0.05 * ref.item()


def test_diagnostics_are_layer_means_of_real_gates():
    c = cfg(n_layers=3)
    m = build_model(c)
    ids, _ = batch(c)
    xs = _block_inputs(m, ids)
    with torch.no_grad():
        gates = [blk.mixer.gates(blk.norm1(x)) for blk, x in zip(m.blocks, xs)]
        out = m(ids)
    eff = torch.stack([(g.mean((0, 1)) >= 0.1).sum().float() for g in gates]).mean().item()  # channels in use
    sp = torch.stack([(g < 0.1).float().mean() for g in gates]).mean().item()
    d = out.diagnostics
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in d.values())  # no host read in the forward
    assert float(d["effective_rank"]) == pytest.approx(eff, rel=1e-6)
    assert float(d["gate_sparsity"]) == pytest.approx(sp, abs=1e-7)
    assert c.ar_ssm_min_rank <= float(d["effective_rank"]) <= c.ar_ssm_max_rank


def test_build_model_is_seeded_and_leaves_global_rng_alone():
    c = cfg()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = build_model(c), build_model(c)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    other = build_model(c.replace(seed=1))
    assert not torch.equal(a.embed.core1, other.embed.core1)


def test_initial_loss_near_uniform_and_no_copy_bias():
    """At init the tied head must not predict the current token (logit ~ sqrt(D) without the input scale)."""
    c = cfg(d_model=256, ffn_rank=8)
    ids, targets = batch(c)
    for head in ("tied", "low_rank"):
        with torch.no_grad():
            out = build_model(c.replace(head=head, head_rank=8))(ids, targets)
        # logits of std 1 cost ~0.5 nats over ln V
        assert abs(out.ce_loss.item() - torch.log(torch.tensor(97.0)).item()) < 1.25, (head, out.ce_loss)
        self_logit = out.logits.gather(-1, ids[..., None]).mean().item()
        assert self_logit < 2.0, (head, self_logit)  # sqrt(256) = 16 if the residual were e_tok


def test_tiny_model_learns_a_fixed_batch():
    c = cfg(loss_chunk_size=6, use_gradient_checkpointing=True)
    m = build_model(c)
    ids, targets = batch(c)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        out = m(ids, targets)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.ce_loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_lns_build_converts_linears():
    from model import lns_linear as lns
    c = cfg(lns_enabled=True, ffn_rank=16, ar_ssm_max_rank=16, head="low_rank", head_rank=16, n_layers=1, n_seq=9)
    m = build_model(c)
    assert not m.training
    assert not any(type(mod) is torch.nn.Linear for mod in m.modules())
    assert any(isinstance(mod, lns.LNSLinear) for mod in m.modules())
    ids = torch.randint(0, c.vocab_size, (1, 9), generator=torch.Generator().manual_seed(0))
    ref = build_model(c.replace(lns_enabled=False)).eval()
    with torch.no_grad():
        got, want = m(ids).logits, ref(ids).logits
    assert (got - want).norm() / want.norm() < 0.1  # 8-bit LNS weights: a few percent, not a different model


def test_rms_norm_gradients_are_exact():
    from model.lm import RMSNorm

    norm = RMSNorm(16).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x_, w_: norm(x_), (x, norm.weight))
    ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # returns the autocast dtype, computes in fp32
        assert norm(x.float()).dtype == torch.bfloat16


# --- saved activations: the formula the memory estimator uses, against a measurement ------------

def _saved_by_component(model, ids, targets, autocast: bool) -> dict[str, int]:
    """Bytes of the distinct non-parameter storages autograd saves, attributed to the module that saved them."""
    blk = model.blocks[0]
    names = {model.embed: "embedding", blk.norm1: "norm", blk.mixer: "ar_ssm", blk.ffn: "ffn"}
    stack, seen, out = ["head"], set(), dict.fromkeys(["embedding", "norm", "ar_ssm", "ffn", "head", "other"], 0)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    hooks = []
    for mod in model.modules():
        label = names.get(mod, "other" if mod in (blk.norm2, model.norm_f) else None)
        if label is not None:
            hooks.append(mod.register_forward_pre_hook(lambda m_, a, label=label: stack.append(label)))
            hooks.append(mod.register_forward_hook(lambda m_, a, o: stack.pop() and None))  # None: keep output

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in seen and key not in params:
            seen.add(key)
            out[stack[-1]] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model(ids, targets)
    for h in hooks:
        h.remove()
    return out


@pytest.mark.parametrize("autocast,backend,cores,head", [
    (True, "torch", 2, "tied"), (False, "torch", 3, "low_rank"), (True, "triton", 3, "tied"),
    (False, "triton", 2, "tied"),
], ids=["bf16-torch-2cores-tied", "fp32-torch-3cores-lowrank", "bf16-triton-3cores-tied", "fp32-triton-2cores"])
def test_saved_bytes_per_token_formula_matches_measurement(monkeypatch, autocast, backend, cores, head):
    from model.lm import saved_bytes_per_token

    monkeypatch.setattr(ARSSM, "scan_backend", lambda self, x: backend)
    c = cfg(n_layers=1, htt_num_cores=cores, head=head, head_rank=8, vocab_size=211)
    m = build_model(c)
    m.train()
    per = {}
    for L in (64, 128):
        ids = torch.randint(0, c.vocab_size, (1, L), generator=torch.Generator().manual_seed(L))
        per[L] = _saved_by_component(m, ids, ids, autocast)
    slope = {k: (per[128][k] - per[64][k]) / 64 for k in per[64]}
    want = saved_bytes_per_token(c, autocast_bytes=2 if autocast else 4, scan_backend=backend)
    r = c.ar_ssm_max_rank
    for key in ("embedding", "norm", "ffn", "head"):
        assert slope[key] == want[key], (key, slope[key], want[key])
    tol = 1 if backend == "triton" else 4 * r  # triton: its carry, 4 B per channel per 64 tokens
    assert abs(slope["ar_ssm"] - want["ar_ssm"]) <= tol, (slope["ar_ssm"], want["ar_ssm"])
    assert slope["other"] == 2 * want["norm"]  # norm2 and the final norm
