"""Shape and parameter arithmetic of the Phase 1 model that needs no torch, one section per component.

Each component's formulas sit here rather than in its module because the modules import torch and the VRAM
estimator (tuner/vram/estimate) must predict without it (`tuner estimate` imports in ~0.2 s). The components
(model/htt.py, ar_ssm.py, ffn.py, lm.py) build their tensors from these shapes and re-export the counts; the
estimator calls the same functions, so there is one definition of every width and count.
Tensor lists are element counts in the order of `Phase1LM.parameters()` (tests compare them with the modules).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model.config import Phase1Config

FFN_EXPANSION = 4  # FFN hidden width = 4 * d_model
CONV_KERNEL = 3  # AR-SSM local term width (tokens t-2, t-1, t)
TABLE_CHUNK_ROWS = 8192  # tied head: rows of E built at once (8192 x 1024 fp32 = 32 MiB)


# --- HTT embedding (model/htt.py) ----------------------------------------------------------------------------


def _ceil_root(n: int, k: int) -> int:
    """Smallest integer x with x**k >= n (exact integer arithmetic, no float rounding surprises)."""
    x = max(1, int(round(n ** (1.0 / k))))
    while x**k < n:
        x += 1
    while x > 1 and (x - 1) ** k >= n:
        x -= 1
    return x


def factorize(n: int, num_cores: int) -> tuple[int, ...]:
    """Near-balanced factors (n1, n2[, n3]) with product >= n, e.g. 50257 -> (225, 224), 1024 -> (32, 32).

    Balanced factors minimise the sum of factors (which is what the parameter count depends on) for a given
    product; the product may exceed n, and the surplus rows/columns are cropped away.
    """
    if num_cores == 2:
        n1 = _ceil_root(n, 2)
        return (n1, -(-n // n1))
    if num_cores == 3:
        n1 = _ceil_root(n, 3)
        rest = -(-n // n1)
        n2 = _ceil_root(rest, 2)
        return (n1, n2, -(-rest // n2))
    raise ValueError(f"htt_num_cores: {num_cores} is out of range (allowed: 2 or 3)")


def htt_shapes(config: Phase1Config) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(vocab factors, model-dim factors) used by the embedding built from `config`."""
    return factorize(config.vocab_size, config.htt_num_cores), factorize(config.d_model, config.htt_num_cores)


def htt_param_tensors(config: Phase1Config) -> list[int]:
    """Elements of the embedding's tensors: cores [v1, d1, r], [v2, r, d2(, r)](, [v3, r, d3]), then the phase
    angles [v_k, r] (the 3-core middle factor has a left and a right phase)."""
    (vs, ds), r = htt_shapes(config), config.htt_rank
    if config.htt_num_cores == 2:
        cores, phases = [vs[0] * ds[0] * r, vs[1] * r * ds[1]], [vs[0] * r, vs[1] * r]
    else:
        cores = [vs[0] * ds[0] * r, vs[1] * r * ds[1] * r, vs[2] * r * ds[2]]
        phases = [vs[0] * r, vs[1] * r, vs[1] * r, vs[2] * r]
    return cores + (phases if config.htt_phase_encoding else [])


def htt_param_count(config: Phase1Config) -> int:
    """Parameters of the HTT embedding (cores plus phase)."""
    return sum(htt_param_tensors(config))


def rows_per_leading_digit(v_factors: tuple[int, ...]) -> int:
    """Vocabulary rows sharing one leading digit i1 (v2, or v2 * v3 with 3 cores): the table's block unit."""
    return math.prod(v_factors[1:])


def table_chunk_step(per_digit: int, chunk_rows: int = TABLE_CHUNK_ROWS) -> int:
    """Rows of the tied head's table built at once: about `chunk_rows`, in whole leading-digit blocks of
    `per_digit` rows so that no block is built twice."""
    return max(1, chunk_rows // per_digit) * per_digit


# --- AR-SSM mixer (model/ar_ssm.py) --------------------------------------------------------------------------


def ar_ssm_layer_param_tensors(config: Phase1Config) -> list[int]:
    """Elements of one mixer's tensors: the decay logits [r] (the mixer's own parameter, listed before its
    submodules'), the gate MLP (Linear D->H, Linear H->(r-m), weights and biases; absent when every channel is
    forced on), U and V [r, D], W_o [D, r], the depthwise conv's weight [D, 1, K] and bias [D]."""
    D, r, m, H = config.d_model, config.ar_ssm_max_rank, config.ar_ssm_min_rank, config.gate_hidden_dim
    gate = [H * D, H, (r - m) * H, r - m] if r > m else []
    return [r, *gate, r * D, r * D, D * r, D * CONV_KERNEL, D]


def ar_ssm_layer_param_count(config: Phase1Config) -> int:
    """Parameters of one AR-SSM mixer."""
    return sum(ar_ssm_layer_param_tensors(config))


def ar_ssm_param_count(config: Phase1Config) -> int:
    """Parameters of all n_layers AR-SSM mixers."""
    return config.n_layers * ar_ssm_layer_param_count(config)


def ar_ssm_cast_elems(config: Phase1Config) -> int:
    """Elements of one mixer's nn.Linear / nn.Conv1d weights and biases: what autocast casts (all but the decay
    logits, which the mixer turns into a fp32 decay itself)."""
    return ar_ssm_layer_param_count(config) - config.ar_ssm_max_rank


# --- low-rank FFN (model/ffn.py) -----------------------------------------------------------------------------


def ffn_layer_param_tensors(config: Phase1Config) -> list[int]:
    """Elements of one FFN's bias-free factors U1 [r, D], V1 [4D, r], U2 [r, 4D], V2 [D, r]."""
    D, r = config.d_model, config.ffn_rank
    return [r * D, FFN_EXPANSION * D * r, r * FFN_EXPANSION * D, D * r]


def ffn_layer_param_count(config: Phase1Config) -> int:
    """Parameters of one low-rank FFN."""
    return sum(ffn_layer_param_tensors(config))


def ffn_param_count(config: Phase1Config) -> int:
    """Parameters of all n_layers low-rank FFNs."""
    return config.n_layers * ffn_layer_param_count(config)


# --- norms, head and the whole model (model/lm.py) -----------------------------------------------------------


def norm_param_count(config: Phase1Config) -> int:
    """RMSNorm weights: two per block plus the final norm, D each."""
    return (2 * config.n_layers + 1) * config.d_model


def head_param_tensors(config: Phase1Config) -> list[int]:
    """Elements of the head's own tensors: the output bias [V] (both heads), then the low-rank head's A [r_h, D] and
    B [V, r_h] (the tied head reuses the embedding's cores)."""
    weights = [config.head_rank * config.d_model, config.vocab_size * config.head_rank]
    return [config.vocab_size] + (weights if config.head == "low_rank" else [])


def head_param_count(config: Phase1Config) -> int:
    """Parameters the head adds (output bias, plus the low-rank factors)."""
    return sum(head_param_tensors(config))


def block_param_tensors(config: Phase1Config) -> list[int]:
    """Elements of one block's tensors: norm1, the mixer, norm2, the FFN."""
    D = config.d_model
    return [D, *ar_ssm_layer_param_tensors(config), D, *ffn_layer_param_tensors(config)]


def param_tensors(config: Phase1Config) -> list[int]:
    """Element counts of every parameter tensor, in the order of `Phase1LM.parameters()`: the output bias first
    (a parameter of Phase1LM itself, listed before its submodules'), the embedding, the blocks, norm_f, the low-rank
    head's factors."""
    bias, *head_weights = head_param_tensors(config)
    blocks = block_param_tensors(config) * config.n_layers
    return [bias, *htt_param_tensors(config), *blocks, config.d_model, *head_weights]


def expected_param_counts(config: Phase1Config) -> dict[str, int]:
    """Parameter counts by component (keys as `Phase1LM.param_counts`) plus "total", from the config alone."""
    counts = {
        "embedding": htt_param_count(config),
        "ar_ssm": ar_ssm_param_count(config),
        "ffn": ffn_param_count(config),
        "head": head_param_count(config),
        "norm": norm_param_count(config),
    }
    counts["total"] = sum(counts.values())
    return counts


def linear_weight_elems(config: Phase1Config) -> int:
    """Elements of all nn.Linear / nn.Conv1d weights and biases (what autocast casts and caches in the forward)."""
    head = sum(head_param_tensors(config)[1:])  # the low-rank factors; the bias is added, not a Linear's
    return config.n_layers * (ar_ssm_cast_elems(config) + ffn_layer_param_count(config)) + head
