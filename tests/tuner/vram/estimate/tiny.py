"""The tiny Phase1Config fields the estimator tests start from (small enough to train on CPU in a second)."""

from __future__ import annotations

TINY = dict(
    vocab_size=500,
    d_model=128,
    n_layers=2,
    n_seq=128,
    batch_size=4,
    loss_chunk_size=32,
    ffn_rank=16,
    ar_ssm_max_rank=16,
    ar_ssm_min_rank=4,
    htt_rank=8,
    stability_monitoring_enabled=False,
)
