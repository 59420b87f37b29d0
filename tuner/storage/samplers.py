"""The study's Optuna sampler, and each worker's seed for it."""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from typing import Any

import optuna

from tuner.errors import SpecError
from tuner.study.spec import StudySpec


def make_sampler(spec: StudySpec, seed: int | None) -> optuna.samplers.BaseSampler:
    """The spec's sampler. Constraints need no `constraints_func` in Optuna 5: TPE, NSGA-II and GP read each
    trial's recorded constraint (tuner.storage.constraints) on their own; `constraints_func` is deprecated.

    seed: the caller's choice, always explicit. The spec's own `sampler.seed` makes one worker alone replay the same
    sequence of configurations; parallel workers must not all use it (they would draw the same configurations):
    `tuner worker` passes `worker_seed(spec seed, worker id)`, the study seed mixed with a hash of the worker's
    host:pid, and the worker logs it."""

    s = dataclasses.replace(spec.sampler, seed=seed)
    kw = s.kwargs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s.name == "tpe":
            conditional = any(p.when for p in spec.space.params)
            return optuna.samplers.TPESampler(
                seed=s.seed,
                n_startup_trials=kw.get("n_startup_trials", 10),
                n_ei_candidates=kw.get("n_ei_candidates", 24),
                multivariate=kw.get("multivariate", True),  # joint density: ranks and checkpointing interact
                group=conditional and kw.get("multivariate", True),  # conditional spaces need group with multivariate
                constant_liar=kw.get("constant_liar", True),  # parallel workers do not pile onto one point
            )
        if s.name == "nsga2":
            # Optuna's default population (50) means a short study never leaves the random first generation.
            population = kw.get("population_size", max(4, min(50, spec.n_trials // 5)))
            return optuna.samplers.NSGAIISampler(
                seed=s.seed,
                population_size=population,
                **{k: kw[k] for k in ("mutation_prob", "crossover_prob") if k in kw},
            )
        if s.name == "gp":
            return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=kw.get("n_startup_trials", 10))
        if s.name == "random":
            return optuna.samplers.RandomSampler(seed=s.seed)
        if s.name == "grid":
            return optuna.samplers.GridSampler(spec.space.grid(), seed=s.seed)
    raise SpecError(f"sampler {s.name!r} is not one of tpe, nsga2, gp, random, grid")


def worker_seed(seed: int | None, key: str | None) -> int | None:
    """The sampler seed of one worker: the study's `seed` itself when `key` is None (a lone worker: the run is
    reproducible from the study's seed), else `seed` mixed with `key` (the worker id) through SHA-256, so parallel
    workers of one seeded study draw distinct sequences instead of replaying one another's. None stays None."""
    if seed is None or key is None:
        return seed
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


SEED_ATTR_PREFIX = "tuner:sampler_seed:"  # study system attr per worker: the sampler seed it used
RUN_SEED_PREFIX = SEED_ATTR_PREFIX + "run"  # study system attr per `tuner run`: run<k>:<worker id> -> its seed


def claim_run_seed(storage: Any, study_id: int, seed: int | None, worker_id: str) -> int | None:
    """The sampler seed of one `tuner run` of a study, claimed under the study lock and registered on the study
    (system attr `tuner:sampler_seed:run<k>:<worker id>`), so each run continues rather than replays the sequence:
    the first run of a study (k = 0) uses the study's seed itself (a fresh study's run is reproducible from it); the
    k-th (a re-run, or a second run at once on the same storage) uses `worker_seed(seed, "run<k>")`. None stays
    None (an unseeded sampler never replays)."""
    from tuner.storage.study_lock import StudyLock

    if seed is None:
        return None
    lock = StudyLock(storage, study_id)
    lock.acquire()
    try:
        k = sum(1 for key in storage.get_study_system_attrs(study_id) if key.startswith(RUN_SEED_PREFIX))
        mine = seed if k == 0 else worker_seed(seed, f"run{k}")
        storage.set_study_system_attr(study_id, f"{RUN_SEED_PREFIX}{k}:{worker_id}", mine)
    finally:
        lock.release()
    return mine
