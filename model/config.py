"""`Phase1Config`: every setting of the Phase 1 model, validated once, with a YAML round trip.

This module imports no torch, so the CLI can validate study files and presets in well under a second.
Field defaults are the tuning guide's (`shared/seeds/000_*`, sections 1-5); the model shape defaults are
the size the guide's presets were written for (GPT-2 vocabulary, d_model 1024, 12 layers, 2048 tokens).
Memory is GiB (2^30 bytes) throughout; `target_vram_gb` keeps the guide's name and is read as GiB.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args, get_type_hints

import yaml

HeadKind = Literal["tied", "low_rank"]
DType = Literal["float32", "bfloat16", "float16"]
StabilityAction = Literal["warn", "raise"]


class ConfigError(ValueError):
    """A config value that cannot build or run. The message names the field, the value and the allowed range."""


@dataclass
class Phase1Config:
    """One Phase 1 model plus how to train it. Shapes: B = batch_size, L = n_seq, D = d_model, V = vocab_size."""

    # --- model shape -----------------------------------------------------------------------------
    vocab_size: int = 50257  # V, tokens; >= 2. The data pipeline trains a BPE tokenizer of exactly this size.
    d_model: int = 1024  # D, hidden width; >= 8
    n_layers: int = 12  # blocks (AR-SSM mixer + low-rank FFN each); >= 1
    n_seq: int = 2048  # L, training sequence length in tokens; >= 2
    ffn_rank: int = 64  # rank r of both FFN maps (D -> r -> 4D -> r -> D); guide range D/128 .. D/16
    head: HeadKind = "tied"  # "tied": logits = h E^T through the HTT table; "low_rank": D -> head_rank -> V
    head_rank: int = 128  # rank of the low-rank head; read only when head == "low_rank"

    # --- AR-SSM (guide section 1) ----------------------------------------------------------------
    ar_ssm_max_rank: int = 32  # r_max scan channels per layer; guide range 16..64
    ar_ssm_min_rank: int = 4  # channels 0..min_rank-1 always on (g = 1); guide range 2..8; <= max_rank
    ar_ssm_gate_hidden_dim: int | None = None  # gate MLP width; None means d_model // 4 (guide: D/8 .. D/2)
    ar_ssm_l1_regularization: float = 1e-3  # weight of the per-layer sum over gate channels of mean(g); 1e-4..1e-2
    ar_ssm_use_fused_scan: bool = True  # Triton scan on CUDA; the torch reference elsewhere

    # --- HTT embedding (guide section 2) ---------------------------------------------------------
    htt_rank: int = 16  # tensor-train rank r; guide range 8..64
    htt_num_cores: int = 2  # 2 or 3 cores
    htt_phase_encoding: bool = True  # per-row, per-rank phase coupling the digits

    # --- LNS (guide section 3; inference only) ---------------------------------------------------
    lns_enabled: bool = False  # store FFN/head weights as LNS codes; training such a model is rejected
    lns_bits: Literal[8, 16] = 8  # code width in bits (sign + fixed-point log2|w|)
    lns_block_size_m: int = 128  # Triton tile rows; power of two in 16..256
    lns_block_size_n: int = 128  # Triton tile columns; power of two in 16..256
    lns_block_size_k: int = 32  # Triton tile depth; power of two in 16..256

    # --- stability monitor (guide section 4) -----------------------------------------------------
    stability_monitoring_enabled: bool = True
    stability_threshold: float = 1e-6  # minimum |det(I - K_eps)| per layer; guide range 1e-7..1e-5
    schatten_s1_bound: float = 100.0  # nuclear-norm bound of each layer's mixing operator; guide 50..200
    schatten_s2_bound: float = 50.0  # Frobenius-norm bound; guide 25..100
    gradient_norm_threshold: float = 10.0  # global grad-norm clip; guide range 1..100
    stability_action: StabilityAction = "raise"  # on a crossed det/Schatten check: warn, or raise
    stability_check_every: int = 10  # optimizer steps between det/Schatten checks (non-finite: every step)

    # --- memory (guide section 5) ----------------------------------------------------------------
    use_gradient_checkpointing: bool = True  # checkpoint each whole block
    checkpoint_ar_ssm: bool = False  # checkpoint the AR-SSM mixers alone
    checkpoint_htt: bool = False  # checkpoint the HTT embedding alone
    target_vram_gb: float = 8.0  # VRAM budget in GiB this config was chosen for; `train --preset` enforces it

    # --- training --------------------------------------------------------------------------------
    dtype: DType = "bfloat16"  # autocast dtype of the forward pass; parameters stay float32
    batch_size: int = 8  # B, sequences per step
    learning_rate: float = 3e-4  # AdamW peak learning rate
    loss_chunk_size: int = 512  # positions per cross-entropy chunk (bounds [B, chunk, V] logits); 0 = all
    seed: int = 0  # parameter init and data order

    # ---------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        _check_types(self)
        _check_values(self)

    # Derived values: one place each.
    @property
    def gate_hidden_dim(self) -> int:
        """Gate MLP width actually built: `ar_ssm_gate_hidden_dim`, or d_model // 4 when None."""
        return self.ar_ssm_gate_hidden_dim if self.ar_ssm_gate_hidden_dim is not None else max(1, self.d_model // 4)

    def check_trainable(self) -> None:
        """Raise ConfigError when this config cannot be trained (LNS weights are inference only)."""
        if self.lns_enabled:
            raise ConfigError(
                "lns_enabled: True cannot be trained (LNS weights are inference-only); "
                "train with lns_enabled: false and convert the trained model for inference"
            )

    # --- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "config") -> Phase1Config:
        """Build from a mapping; unknown keys are an error naming the key (and the closest known one)."""
        return from_mapping(cls, data, where)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> Phase1Config:
        return cls.from_dict(yaml.safe_load(text) or {})

    def replace(self, **changes: Any) -> Phase1Config:
        return dataclasses.replace(self, **changes)


# --- validation ----------------------------------------------------------------------------------

_HINTS: dict[str, Any] | None = None


def field_types() -> dict[str, Any]:
    """Resolved type hints of Phase1Config's fields (used by the tuner to type-check search spaces)."""
    global _HINTS
    if _HINTS is None:
        _HINTS = get_type_hints(Phase1Config)
    return _HINTS


def type_ok(value: Any, hint: Any) -> bool:
    """Whether `value` (as read from YAML) fits the field type `hint` (from `field_types()`): bool is not an int, an
    int is a float, Literal values must match in type too, Optional admits None. The one rule used by Phase1Config's
    validation and by the tuner's search-space checks, so the two never disagree."""
    args = get_args(hint)
    origin = getattr(hint, "__origin__", None)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if args and type(None) in args:  # Optional[X] / X | None
        return value is None or any(type_ok(value, a) for a in args if a is not type(None))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def describe_type(hint: Any) -> str:
    """The field type `hint` in words for error messages ("an integer", "one of 'a', 'b'", "a number or null")."""
    args = get_args(hint)
    if getattr(hint, "__origin__", None) is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if args and type(None) in args:
        return " or ".join(describe_type(a) for a in args if a is not type(None)) + " or null"
    return {bool: "true or false", int: "an integer", float: "a number"}.get(hint, getattr(hint, "__name__", str(hint)))


def _check_types(cfg: Phase1Config) -> None:
    for name, hint in field_types().items():
        value = getattr(cfg, name)
        if not type_ok(value, hint):
            raise ConfigError(f"{name}: {value!r} is not {describe_type(hint)}")
        if hint is float and isinstance(value, int):
            setattr(cfg, name, float(value))  # YAML "1" for a float field
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}: {value!r} must be a finite number")


def _at_least(cfg: Phase1Config, name: str, low: float) -> None:
    value = getattr(cfg, name)
    if value < low:
        raise ConfigError(f"{name}: {value!r} is out of range (allowed: >= {low})")


def _positive(cfg: Phase1Config, name: str) -> None:
    value = getattr(cfg, name)
    if not value > 0:
        raise ConfigError(f"{name}: {value!r} is out of range (allowed: > 0)")


def _check_values(cfg: Phase1Config) -> None:
    for name, low in [
        ("vocab_size", 2),
        ("d_model", 8),
        ("n_layers", 1),
        ("n_seq", 2),
        ("ffn_rank", 1),
        ("head_rank", 1),
        ("ar_ssm_max_rank", 1),
        ("ar_ssm_min_rank", 1),
        ("htt_rank", 1),
        ("batch_size", 1),
        ("stability_check_every", 1),
        ("loss_chunk_size", 0),
        ("ar_ssm_l1_regularization", 0.0),
        ("seed", 0),
    ]:
        _at_least(cfg, name, low)
    for name in [
        "stability_threshold",
        "schatten_s1_bound",
        "schatten_s2_bound",
        "gradient_norm_threshold",
        "target_vram_gb",
        "learning_rate",
    ]:
        _positive(cfg, name)
    if cfg.ar_ssm_min_rank > cfg.ar_ssm_max_rank:
        raise ConfigError(
            f"ar_ssm_min_rank: {cfg.ar_ssm_min_rank} is out of range (allowed: 1 .. ar_ssm_max_rank = "
            f"{cfg.ar_ssm_max_rank})"
        )
    if cfg.ar_ssm_gate_hidden_dim is not None and cfg.ar_ssm_gate_hidden_dim < 1:
        raise ConfigError(
            f"ar_ssm_gate_hidden_dim: {cfg.ar_ssm_gate_hidden_dim} is out of range (allowed: >= 1, "
            "or null for d_model // 4)"
        )
    if cfg.htt_num_cores not in (2, 3):
        raise ConfigError(f"htt_num_cores: {cfg.htt_num_cores} is out of range (allowed: 2 or 3)")
    for name in ("lns_block_size_m", "lns_block_size_n", "lns_block_size_k"):
        value = getattr(cfg, name)
        if value < 16 or value > 256 or value & (value - 1):
            raise ConfigError(f"{name}: {value} is out of range (allowed: a power of two from 16 to 256)")
    if cfg.ffn_rank > 4 * cfg.d_model:
        raise ConfigError(f"ffn_rank: {cfg.ffn_rank} is out of range (allowed: 1 .. 4 * d_model = {4 * cfg.d_model})")
    if cfg.stability_threshold >= 1.0:
        raise ConfigError(f"stability_threshold: {cfg.stability_threshold} is out of range (allowed: 0 < x < 1)")


def from_mapping(cls: Any, data: Any, where: str) -> Any:
    """`cls(**data)` for a config dataclass, after checking `data` is a mapping of its fields: ConfigError naming
    the key (and the closest field) otherwise. Shared by Phase1Config and the dense baseline's DenseConfig."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown {cls.__name__} field{_did_you_mean(str(key), known)}")
    return cls(**dict(data))


def _did_you_mean(key: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- presets: section 6 of the guide, fields it does not name take the defaults ---------------------

# What the guide sets alike for its three training presets; each preset below adds its own ranks, L1 weight,
# checkpointing and VRAM target.
_TRAINING_COMMON: dict[str, Any] = dict(
    ar_ssm_use_fused_scan=True,
    htt_num_cores=2,
    htt_phase_encoding=True,
    lns_enabled=False,
    stability_monitoring_enabled=True,
    stability_threshold=1e-6,
    checkpoint_htt=False,
)

PRESETS: dict[str, Phase1Config] = {
    "8gb": Phase1Config(
        **_TRAINING_COMMON,
        ar_ssm_max_rank=16,
        ar_ssm_min_rank=4,
        ar_ssm_l1_regularization=0.01,
        htt_rank=12,
        use_gradient_checkpointing=True,
        checkpoint_ar_ssm=True,
        target_vram_gb=8.0,
    ),
    "10gb": Phase1Config(
        **_TRAINING_COMMON,
        ar_ssm_max_rank=32,
        ar_ssm_min_rank=4,
        ar_ssm_l1_regularization=0.001,
        htt_rank=16,
        use_gradient_checkpointing=True,
        checkpoint_ar_ssm=True,
        target_vram_gb=10.0,
    ),
    "24gb": Phase1Config(
        **_TRAINING_COMMON,
        ar_ssm_max_rank=64,
        ar_ssm_min_rank=8,
        ar_ssm_l1_regularization=0.0001,
        htt_rank=32,
        use_gradient_checkpointing=False,
        checkpoint_ar_ssm=False,
        target_vram_gb=24.0,
    ),
    "inference": Phase1Config(
        ar_ssm_max_rank=32,
        ar_ssm_min_rank=4,
        ar_ssm_l1_regularization=0.001,
        ar_ssm_use_fused_scan=True,
        htt_rank=16,
        htt_num_cores=2,
        htt_phase_encoding=True,
        lns_enabled=True,
        lns_block_size_m=128,
        lns_block_size_n=128,
        lns_block_size_k=32,
        stability_monitoring_enabled=False,
        use_gradient_checkpointing=False,
        target_vram_gb=8.0,
    ),
}
