"""tuner.vram.estimate.allocator: the caching allocator's side of the estimate (expandable segments): request
rounding, the page rounding of the segment end, and the replay of the cross-entropy backward's allocations whose
hole (kappa) the estimate adds."""

from __future__ import annotations

import pytest

from model.config import Phase1Config
from tests.tuner.vram.estimate.tiny import TINY
from tuner.units import GIB, MIB
from tuner.vram.estimate import allocator as est_alloc
from tuner.vram.estimate.allocator import BLOCK, PAGE, allocator_gib, block_round


def test_block_round():
    assert [block_round(n) for n in (0, -3, 1, 512, 513, 1000.2)] == [0, 0, 512, 512, 1024, 1024]
    assert BLOCK == 512


def test_allocator_gib_is_page_rounding_plus_the_small_pool_page():
    tensor = (10 * PAGE + 1) / GIB  # one byte into the 11th page
    assert allocator_gib(tensor, 0.0, 0.0, 0.7) * GIB == pytest.approx(11 * PAGE - (10 * PAGE + 1) + PAGE)
    # a CE backward whose hole reaches above the tensor peak sets the segment end instead
    ce = allocator_gib(1.0, 0.9, 0.5, 0.5)  # 0.9 + 0.25 = 1.15 GiB > 1.0
    assert ce == pytest.approx(0.15 + PAGE / GIB, abs=2 * MIB / GIB)


def test_segment_replay_monotone_allocations_leave_no_gap():
    # Allocations only (no frees): the segment's end is exactly the live bytes, whatever the sizes.
    ev = [("alloc", f"t{i}", (i % 7 + 1) * 1024 * 512) for i in range(40)]
    assert est_alloc._segment_gap(ev) == 0
    # Stack-like use (free the newest, then ask for no more than was freed) refills the end: still no gap.
    ev = [
        ("alloc", "a", 4 << 20),
        ("alloc", "b", 8 << 20),
        ("free", "b", 0),
        ("alloc", "c", 6 << 20),
        ("alloc", "d", 2 << 20),
        ("free", "a", 0),
        ("alloc", "e", 4 << 20),
    ]
    assert est_alloc._segment_gap(ev) == 0


def test_segment_replay_grows_past_a_too_small_hole():
    # A 3 MiB hole, then a 4 MiB request: it cannot use the hole and extends the end (best fit, no moving).
    mib = 1 << 20
    ev = [("alloc", "a", 3 * mib), ("alloc", "b", 5 * mib), ("free", "a", 0), ("alloc", "c", 4 * mib)]
    assert est_alloc._segment_gap(ev) == 3 * mib
    # A free block at the end is grown in place rather than left behind.
    ev = [("alloc", "a", 5 * mib), ("alloc", "b", 2 * mib), ("free", "b", 0), ("alloc", "c", 3 * mib)]
    assert est_alloc._segment_gap(ev) == 0


def test_ce_backward_replay_kappa():
    # Plain-head chunk (no table blocks): under autocast the freed bf16 logits (0.5 F) cannot take the
    # log-softmax gradient (F), which extends the segment by exactly 0.5 F; in fp32 `.float()` is the same tensor
    # and the freed logits (F) take the nll gradient exactly: no growth.
    low = Phase1Config.from_dict({**TINY, "vocab_size": 50257, "head": "low_rank", "head_rank": 8})
    rows = 2048
    f = 4 * rows * low.vocab_size
    gap = est_alloc._segment_gap(est_alloc.ce_backward_events(low, rows))
    assert abs(gap - f // 2) <= 2 * est_alloc.BLOCK
    assert est_alloc._segment_gap(est_alloc.ce_backward_events(low.replace(dtype="float32"), rows)) == 0
    # Unchunked: the previous step's logits, freed when model() returns, leave the same 0.5 F hole.
    gap_u = est_alloc._segment_gap(est_alloc.ce_backward_events(low, rows, chunked=False))
    assert abs(gap_u - f // 2) <= 2 * est_alloc.BLOCK
    # Tied head: the table blocks kept between the logits buffer and its fp32 copy add their parts' holes. These
    # figures equal a replay of the full allocation trace of real CPU training steps (profiler memory events) of
    # d_model 256, vocab 50257, B 2, n_seq 512 / chunk 256 (and unchunked n_seq 256): 0.580 bf16, 0.140 fp32.
    tied = Phase1Config.from_dict(
        {**TINY, "vocab_size": 50257, "d_model": 256, "n_seq": 512, "batch_size": 2, "loss_chunk_size": 256}
    )
    assert est_alloc.replay_kappa(tied, 512, True) == pytest.approx(0.580, abs=0.005)
    assert est_alloc.replay_kappa(tied.replace(dtype="float32"), 512, True) == pytest.approx(0.140, abs=0.005)


@pytest.mark.parametrize("dtype,s", [("bfloat16", 2), ("float32", 4)])
def test_recompute_hole_is_the_recomputed_blocks_largest_request(dtype, s):
    # Checkpointed blocks: the FFN's hidden [N, 4D] in the autocast dtype (fp32 without autocast), 512-rounded.
    c = Phase1Config.from_dict({**TINY, "dtype": dtype, "use_gradient_checkpointing": True})
    n, d = c.batch_size * c.n_seq, c.d_model
    assert est_alloc.recompute_hole_bytes(c) == block_round(s * n * 4 * d)
    # Only the mixer recomputed: its largest request (the fp32 residual-stream temporaries [N, D], or in fp32 the
    # conv's padded input [B, D, L + 2]), below the FFN's hidden.
    m = c.replace(use_gradient_checkpointing=False, checkpoint_ar_ssm=True)
    expect = max(4 * n * d, s * c.batch_size * d * (c.n_seq + 2))
    assert est_alloc.recompute_hole_bytes(m) == block_round(expect) < est_alloc.recompute_hole_bytes(c)


def test_recompute_hole_is_zero_without_recompute_and_grows_with_b_l_d():
    c = Phase1Config.from_dict({**TINY, "use_gradient_checkpointing": False, "checkpoint_ar_ssm": False})
    assert est_alloc.recompute_hole_bytes(c) == 0
    # checkpoint_htt recomputes only the embedding (no block): still nothing to split
    assert est_alloc.recompute_hole_bytes(c.replace(checkpoint_htt=True)) == 0
    ck = c.replace(use_gradient_checkpointing=True)
    base = est_alloc.recompute_hole_bytes(ck)
    for field, scale in (("batch_size", 3), ("n_seq", 2), ("d_model", 2)):
        bigger = est_alloc.recompute_hole_bytes(ck.replace(**{field: getattr(ck, field) * scale}))
        assert bigger == pytest.approx(scale * base, rel=1e-3), field  # linear in B L D (up to 512-byte rounding)


def test_allocator_gib_takes_the_recompute_moment_when_its_hole_reaches_highest():
    # tensor peak 1.0 GiB; CE backward 0.9 + 0.5 x 0.2 = 1.0; recomputed blocks at 0.95 + a 0.25 GiB hole = 1.2
    a = allocator_gib(1.0, 0.9, 0.2, 0.5, 0.95, 0.25)
    assert a == pytest.approx(0.2 + PAGE / GIB, abs=2 * MIB / GIB)
    # the same hole under a lower moment leaves the answer to the CE hole / page rounding
    assert allocator_gib(1.0, 0.9, 0.2, 0.5, 0.5, 0.25) == allocator_gib(1.0, 0.9, 0.2, 0.5)
