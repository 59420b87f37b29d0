"""Parameter counts of a Phase1Config, tensor by tensor, for the estimator (the model's own formulas live in
model/lm.py `expected_param_counts`; a test keeps the two equal). Pure arithmetic, no torch."""

from __future__ import annotations

from typing import Any

from model.shapes import CONV_KERNEL, FFN_EXPANSION, factorize


def param_tensors(c: Any) -> list[int]:
    """Element counts of every parameter tensor, in model order (model.lm.Phase1LM.parameters())."""
    D, r, m, H, f = c.d_model, c.ar_ssm_max_rank, c.ar_ssm_min_rank, c.gate_hidden_dim, c.ffn_rank
    vs, ds = factorize(c.vocab_size, c.htt_num_cores), factorize(c.d_model, c.htt_num_cores)
    R = c.htt_rank
    out: list[int] = []
    if c.htt_num_cores == 2:
        out += [vs[0] * ds[0] * R, vs[1] * R * ds[1]]
        if c.htt_phase_encoding:
            out += [vs[0] * R, vs[1] * R]
    else:
        out += [vs[0] * ds[0] * R, vs[1] * R * ds[1] * R, vs[2] * R * ds[2]]
        if c.htt_phase_encoding:
            out += [vs[0] * R, vs[1] * R, vs[1] * R, vs[2] * R]
    for _ in range(c.n_layers):
        out.append(D)  # norm1
        if r > m:
            out += [H * D, H, (r - m) * H, r - m]  # gate MLP
        out += [r * D, r * D, D * r, D * CONV_KERNEL, D, r]  # U, V, W_o, conv weight+bias, decay_logit
        out.append(D)  # norm2
        out += [f * D, FFN_EXPANSION * D * f, f * FFN_EXPANSION * D, D * f]  # U1, V1, U2, V2
    out.append(D)  # norm_f
    out.append(c.vocab_size)  # the head's output bias [V] (tied and low-rank heads)
    if c.head == "low_rank":
        out += [c.head_rank * D, c.vocab_size * c.head_rank]
    return out


def linear_weight_elems(c: Any) -> int:
    """Elements of all nn.Linear / Conv1d weights (what autocast casts and caches during the forward)."""
    D, r, m, H, f = c.d_model, c.ar_ssm_max_rank, c.ar_ssm_min_rank, c.gate_hidden_dim, c.ffn_rank
    per_layer = (H * D + H + (r - m) * H + (r - m) if r > m else 0) + 3 * r * D + D * CONV_KERNEL + D
    per_layer += 2 * f * FFN_EXPANSION * D + 2 * D * f
    head = c.head_rank * (D + c.vocab_size) if c.head == "low_rank" else 0
    return int(c.n_layers * per_layer + head)


def mixer_weight_elems(c: Any) -> int:
    D, r, m, H = c.d_model, c.ar_ssm_max_rank, c.ar_ssm_min_rank, c.gate_hidden_dim
    return int((H * D + H + (r - m) * H + (r - m) if r > m else 0) + 3 * r * D + D * CONV_KERNEL + D)
