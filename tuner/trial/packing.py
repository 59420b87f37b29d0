"""Several workers on one GPU: how many fit (`workers_per_gpu`, pure) and the plan `tuner launch --per-gpu` follows.

Why a worker needs at most `ceiling + floor` on the card: the trial child's allocator is capped at the study's
ceiling (tuner.vram.guard) and the CUDA context and kernels live outside the allocator (the floor, ~0.75-0.82 GiB
per process measured on an H100), so until the NVML sampler stops the trial at its next step one worker can hold
the whole cap plus its context. A study whose largest configuration is predicted below the ceiling needs only that
prediction (the estimator's GPU figure is the NVML per-process total, context included). The dense reference trial
(`baseline:`) is watched without the study's ceiling, so a packed launch gives it a ceiling of its own
(`reference_gib`, reserved once per GPU) and passes it to the workers (REFERENCE_CEILING_ENV).

All memory figures are GiB (2^30 bytes).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from typing import Any

from tuner.errors import TunerError

CONTEXT_FLOOR_GIB = 0.85  # CUDA context + kernels outside the allocator, per process (0.75-0.82 GiB measured, H100)
HEADROOM_FRACTION = 0.10  # per worker: the estimator's error (p90 4.8%, max 6.3% measured) and the guard's lag
CARD_HEADROOM_GIB = 2.0  # per card, at least (or CARD_HEADROOM_FRACTION of it): other processes, fragmentation
CARD_HEADROOM_FRACTION = 0.05
CORES_PER_WORKER = 2  # a step is bound by kernel launches (one busy Python thread) plus the parent's NVML/heartbeat
MAX_CORNERS = 8192  # configurations tried for the space's largest; a bigger space is sized from the ceiling
# Environment variable carrying the reference trial's ceiling (GiB) to packed workers (tuner.trial.objective).
REFERENCE_CEILING_ENV = "TUNER_REFERENCE_CEILING_GIB"


@dataclass(frozen=True)
class PackPlan:
    """How many workers one GPU runs and what each may use.

    count: workers on the GPU. share_gib: one worker's allotment (its worst case plus HEADROOM_FRACTION).
    reference_gib: the dense reference trial's ceiling on this GPU (None: the study has no reference).
    usable_gib: the card's free memory less its headroom. basis: how share_gib was found (for the launch line)."""

    count: int
    share_gib: float
    reference_gib: float | None
    usable_gib: float
    basis: str

    @property
    def planned_gib(self) -> float:
        """Memory the plan may take at worst: every share, the reference in one of them."""
        extra = max(0.0, (self.reference_gib or 0.0) - self.share_gib)
        return self.count * self.share_gib + extra


def worker_need_gib(
    ceiling_gib: float, predicted_peak_gib: float | None, floor_gib: float = CONTEXT_FLOOR_GIB
) -> float:
    """One worker's worst case on the card (GiB): the largest predicted peak (NVML total, context included) when it
    is under the ceiling, else the allocator cap plus the context floor (see the module docstring)."""
    if not ceiling_gib > 0:
        raise ValueError(f"ceiling_gib {ceiling_gib!r} must be > 0")
    if not floor_gib >= 0:
        raise ValueError(f"floor_gib {floor_gib!r} must be >= 0")
    cap = ceiling_gib + floor_gib
    if predicted_peak_gib is None or not math.isfinite(predicted_peak_gib):
        return cap
    return min(cap, max(float(predicted_peak_gib), floor_gib))


def card_usable_gib(card_free_gib: float, card_total_gib: float | None = None) -> float:
    """Free memory less the card's headroom (max of CARD_HEADROOM_GIB and CARD_HEADROOM_FRACTION of the card)."""
    total = card_free_gib if card_total_gib is None else card_total_gib
    return max(0.0, card_free_gib - max(CARD_HEADROOM_GIB, CARD_HEADROOM_FRACTION * total))


def workers_per_gpu(
    card_free_gib: float,
    ceiling_gib: float,
    predicted_peak_gib: float | None,
    floor_gib: float = CONTEXT_FLOOR_GIB,
    *,
    card_total_gib: float | None = None,
    reference_gib: float | None = None,
    max_workers: int | None = None,
) -> int:
    """How many workers fit on a card with `card_free_gib` free: count * share (+ the reference's extra) within the
    card's usable memory, at most `max_workers`. 0 when not even one fits. Pure.

    predicted_peak_gib: the estimator's prediction for the space's largest configuration (None: unknown, the
    ceiling decides). reference_gib: the reference trial's ceiling, reserved once (None: no reference)."""
    share = worker_need_gib(ceiling_gib, predicted_peak_gib, floor_gib) * (1.0 + HEADROOM_FRACTION)
    usable = card_usable_gib(card_free_gib, card_total_gib) - max(0.0, (reference_gib or 0.0) - share)
    count = max(0, int(usable // share))
    return count if max_workers is None else min(count, max(0, int(max_workers)))


def plan_gpu(
    card_free_gib: float,
    card_total_gib: float,
    ceiling_gib: float,
    predicted_peak_gib: float | None,
    *,
    per_gpu: int | None,
    has_reference: bool,
    max_workers: int | None = None,
    floor_gib: float = CONTEXT_FLOOR_GIB,
) -> PackPlan:
    """The plan for one GPU: `per_gpu` workers (None: as many as fit, `workers_per_gpu`). Raises TunerError, with the
    fix, when the count asked for (or one worker) does not fit the card."""
    need = worker_need_gib(ceiling_gib, predicted_peak_gib, floor_gib)
    share = need * (1.0 + HEADROOM_FRACTION)
    basis = "the ceiling + context" if need >= ceiling_gib + floor_gib else "the largest predicted peak"
    # The reference may use up to two shares: a dense model of the study's shape outgrows the compressed ones.
    reference = 2.0 * share if has_reference else None
    usable = card_usable_gib(card_free_gib, card_total_gib)
    fits = workers_per_gpu(
        card_free_gib,
        ceiling_gib,
        predicted_peak_gib,
        floor_gib,
        card_total_gib=card_total_gib,
        reference_gib=reference,
        max_workers=None,
    )
    if per_gpu is None:
        count = fits if max_workers is None else min(fits, max(1, max_workers))
        if count < 1:
            raise TunerError(
                f"--per-gpu auto: one worker needs {share:.1f} GiB ({basis}, +{HEADROOM_FRACTION:.0%})"
                + (f" and the reference trial {reference:.1f} GiB" if reference else "")
                + f", the card has {usable:.1f} GiB usable of {card_free_gib:.1f} GiB free; free the GPU or lower "
                "vram_ceiling_gib"
            )
    else:
        count = int(per_gpu)
        if count > fits:
            raise TunerError(
                f"--per-gpu {count}: {count} workers x {share:.1f} GiB ({basis}, +{HEADROOM_FRACTION:.0%})"
                + (f" with the reference trial at {reference:.1f} GiB" if reference else "")
                + f" exceed the {usable:.1f} GiB usable of {card_free_gib:.1f} GiB free; use --per-gpu {max(fits, 1)}"
                " or --per-gpu auto"
            )
    return PackPlan(count=count, share_gib=share, reference_gib=reference, usable_gib=usable, basis=basis)


def cpu_workers_cap(n_gpus: int, cpu_count: int | None = None) -> int:
    """Workers per GPU the host's cores carry (CORES_PER_WORKER each), at least 1."""
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, cores // max(1, n_gpus) // CORES_PER_WORKER)


def largest_predicted_gib(
    spec: Any, calibration: Any = None, *, calibrated: bool | None = None, floor_gib: float = CONTEXT_FLOOR_GIB
) -> float | None:
    """The estimator's largest GPU peak (GiB, NVML per-process total) over the corners of `spec`'s search space
    (each numeric parameter at its ends, every choice of a categorical; inactive conditional parameters left out),
    or None when the space has more than MAX_CORNERS corners or the estimate is off for the study. Without a
    calibration the estimate has no outside part (context, kernels): `floor_gib` stands in for it."""
    if not spec.estimate.enabled:
        return None
    from model.config import ConfigError
    from tuner.vram.estimate import estimate

    params = list(spec.space.params)
    values = [p.values(limit=2) for p in params]
    if math.prod(len(v) for v in values) > MAX_CORNERS:
        return None
    best: float | None = None
    seen: set[tuple[tuple[str, Any], ...]] = set()
    for combo in itertools.product(*values):
        chosen = dict(zip((p.name for p in params), combo))
        active = {p.name: chosen[p.name] for p in spec.space.active(chosen)}
        key = tuple(sorted(active.items(), key=lambda kv: kv[0]))
        if key in seen:
            continue
        seen.add(key)
        try:
            config = spec.build_config(active)
        except ConfigError:
            continue
        total = float(estimate(config, calibration, device="cuda", calibrated=calibrated).total_gib)
        best = total if best is None else max(best, total)
    return None if best is None else best + (floor_gib if calibration is None else 0.0)
