"""Sizing several workers per GPU (tuner.trial.packing): the pure count from card memory, ceiling, prediction and
context floor; the plan's refusals; the space's largest predicted configuration against a brute-force search."""

from __future__ import annotations

import itertools
import random

import pytest

from tests.tuner.tiny import mutate
from tuner.errors import TunerError
from tuner.study.loader import spec_from_dict
from tuner.trial.packing import (
    CONTEXT_FLOOR_GIB,
    HEADROOM_FRACTION,
    card_usable_gib,
    cpu_workers_cap,
    largest_predicted_gib,
    plan_gpu,
    worker_need_gib,
    workers_per_gpu,
)


def test_a_worker_needs_its_prediction_under_the_ceiling_else_the_cap_plus_its_context():
    assert worker_need_gib(8.0, 5.0, 0.85) == 5.0  # the GPU prediction is NVML's total: context included
    assert worker_need_gib(8.0, 11.4, 0.85) == pytest.approx(8.85)  # allocator cap + context until the guard stops it
    assert worker_need_gib(8.0, None, 0.85) == pytest.approx(8.85)  # unknown: the ceiling decides
    assert worker_need_gib(8.0, 0.1, 0.85) == 0.85  # never less than one process's context
    with pytest.raises(ValueError):
        worker_need_gib(0.0, 1.0)


def test_an_h100_takes_seven_8gib_workers_and_one_fewer_with_a_reference():
    # H100 80GB: ~79.2 GiB, ~78.6 free with nothing running; the 8gb study's largest config is predicted over 8 GiB.
    assert workers_per_gpu(78.6, 8.0, 11.4, 0.85, card_total_gib=79.2) == 7
    share = 8.85 * (1 + HEADROOM_FRACTION)
    assert workers_per_gpu(78.6, 8.0, 11.4, 0.85, card_total_gib=79.2, reference_gib=2 * share) == 6
    # a space predicted small packs more
    assert workers_per_gpu(78.6, 8.0, 3.0, 0.85, card_total_gib=79.2) == 22
    assert workers_per_gpu(78.6, 8.0, 3.0, 0.85, card_total_gib=79.2, max_workers=8) == 8


def test_no_worker_when_one_does_not_fit():
    assert workers_per_gpu(10.0, 8.0, None, 0.85) == 0
    assert workers_per_gpu(0.0, 1.0, 0.5) == 0


@pytest.mark.parametrize("seed", range(5))
def test_the_workers_of_one_card_never_exceed_its_free_memory(seed):
    rng = random.Random(seed)
    for _ in range(300):
        total = rng.uniform(8, 160)
        free = rng.uniform(0, total)
        ceiling = rng.uniform(0.5, 40)
        predicted = rng.choice([None, rng.uniform(0.1, 60)])
        reference = rng.choice([None, rng.uniform(1, 80)])
        n = workers_per_gpu(free, ceiling, predicted, card_total_gib=total, reference_gib=reference)
        share = worker_need_gib(ceiling, predicted) * (1 + HEADROOM_FRACTION)
        worst = n * share + (max(0.0, (reference or 0.0) - share) if n else 0.0)
        assert worst <= card_usable_gib(free, total) + 1e-9 <= free + 1e-9
        # and one more would not fit
        assert (n + 1) * share + max(0.0, (reference or 0.0) - share) > card_usable_gib(free, total)


def test_plan_refuses_a_count_that_does_not_fit_and_names_the_fix():
    plan = plan_gpu(78.6, 79.2, 8.0, 11.4, per_gpu=None, has_reference=True)
    assert plan.count == 6 and plan.reference_gib == pytest.approx(2 * plan.share_gib)
    assert plan.planned_gib <= plan.usable_gib
    assert plan_gpu(78.6, 79.2, 8.0, 11.4, per_gpu=None, has_reference=False, max_workers=4).count == 4
    assert plan_gpu(78.6, 79.2, 8.0, 11.4, per_gpu=3, has_reference=False).count == 3
    with pytest.raises(TunerError, match=r"--per-gpu 9: .* use --per-gpu 7 or --per-gpu auto"):
        plan_gpu(78.6, 79.2, 8.0, 11.4, per_gpu=9, has_reference=False)
    with pytest.raises(TunerError, match="--per-gpu auto: one worker needs .* lower vram_ceiling_gib"):
        plan_gpu(9.0, 9.5, 8.0, None, per_gpu=None, has_reference=False)


def test_cpu_cap():
    assert cpu_workers_cap(1, 16) == 8 and cpu_workers_cap(4, 64) == 8 and cpu_workers_cap(8, 2) == 1


def test_largest_prediction_is_the_max_over_the_space():
    from tuner.vram.estimate import estimate

    spec = spec_from_dict(mutate(estimate={"enabled": True, "margin": 0.05}), check_paths=False)
    best = largest_predicted_gib(spec)
    assert best is not None and best > 0
    # brute force over every value of every parameter (floats at their ends): no configuration is larger
    params = spec.space.params
    worst = 0.0
    for combo in itertools.product(*[p.values() for p in params]):
        chosen = dict(zip(spec.space.names, combo))
        active = {p.name: chosen[p.name] for p in spec.space.active(chosen)}
        worst = max(worst, estimate(spec.build_config(active), device="cuda").total_gib)
    assert best == pytest.approx(worst + CONTEXT_FLOOR_GIB)  # no calibration: the context floor stands in
    off = spec_from_dict(mutate(estimate={"enabled": False}), check_paths=False)
    assert largest_predicted_gib(off) is None
