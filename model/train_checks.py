"""The checks train_and_evaluate makes before it builds anything: budgets, the data's vocabulary and length."""

from __future__ import annotations

from model.config import ConfigError, Phase1Config
from model.data import DataError, TokenData
from model.dense_config import DenseConfig


def check_inputs(config: Phase1Config | DenseConfig, data: TokenData, train_tokens: int, eval_tokens: int) -> None:
    """Raises ValueError (a budget not a positive int), ConfigError (vocab mismatch), DataError (a split shorter
    than one window of n_seq + 1 tokens)."""
    for name, value in (("train_tokens", train_tokens), ("eval_tokens", eval_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: {value!r} must be a positive integer")
    if data.vocab_size != config.vocab_size:
        raise ConfigError(
            f"vocab_size: the config has {config.vocab_size} but the data was tokenised for "
            f"{data.vocab_size}; prepare the data with vocab_size={config.vocab_size}"
        )
    if data.n_train_tokens < config.n_seq + 1:
        raise DataError(
            f"data: {data.n_train_tokens} training tokens cannot fill one window of n_seq + 1 = "
            f"{config.n_seq + 1}; raise data.max_bytes or lower n_seq"
        )
    if data.n_val_tokens < config.n_seq + 1:
        raise DataError(
            f"data: {data.n_val_tokens} validation tokens cannot fill one window of n_seq + 1 = "
            f"{config.n_seq + 1}; raise data.max_bytes or data.val_fraction, or lower n_seq"
        )
