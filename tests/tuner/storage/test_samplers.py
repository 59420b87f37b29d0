"""tuner.storage.samplers: the spec's Optuna sampler (its options, the parallel-worker defaults) and each worker's
seed. The settings checks read the samplers' private attributes (Optuna exposes no getter): an Optuna upgrade that
renames them fails here, in a test, never in the service."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from tests.tuner.tiny import SS, mutate, spec
from tuner.errors import SpecError
from tuner.storage.samplers import make_sampler, worker_seed

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize(
    "name, cls",
    [
        ("tpe", optuna.samplers.TPESampler),
        ("nsga2", optuna.samplers.NSGAIISampler),
        ("gp", optuna.samplers.GPSampler),
        ("random", optuna.samplers.RandomSampler),
    ],
)
def test_make_sampler(name, cls):
    assert isinstance(make_sampler(spec(sampler={"name": name, "seed": 1}), 1), cls)


def test_make_grid_sampler():
    d = mutate()
    d["sampler"] = {"name": "grid"}
    d["search_space"] = {
        "ar_ssm_max_rank": {"type": "int", "low": 8, "high": 16, "step": 8},
        "htt_phase_encoding": {"type": "categorical", "choices": [True, False]},
    }
    loaded = spec(**d)
    sampler = make_sampler(loaded, loaded.sampler.seed)
    assert isinstance(sampler, optuna.samplers.GridSampler)


def test_worker_seed():
    assert worker_seed(0, None) == 0 and worker_seed(None, "h:1") is None
    seeds = {worker_seed(0, f"host:{pid}") for pid in range(1000, 1064)}
    assert len(seeds) == 64 and 0 not in seeds
    assert worker_seed(7, "host:1") == worker_seed(7, "host:1") != worker_seed(8, "host:1")


def test_make_sampler_seed_override_draws_distinct_sequences():
    d = mutate()
    d["sampler"] = {"name": "random", "seed": 0}
    s = spec(**d)

    def draws(sampler):
        study = optuna.create_study(sampler=sampler)
        return [study.ask().suggest_float("x", 0, 1) for _ in range(5)]

    seed = s.sampler.seed
    assert draws(make_sampler(s, seed)) == draws(make_sampler(s, seed))  # one worker: reproducible from the seed
    assert draws(make_sampler(s, worker_seed(0, "a"))) != draws(make_sampler(s, worker_seed(0, "b")))
    assert draws(make_sampler(s, 0)) == draws(make_sampler(s, seed))


def test_tpe_defaults_suit_parallel_workers_and_a_conditional_space(tiny_spec):
    sampler = make_sampler(tiny_spec, 0)  # the tiny space has a `when:` parameter
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._constant_liar and sampler._multivariate and sampler._group
    unconditional = spec(**mutate(**{f"{SS}__checkpoint_ar_ssm": {"type": "categorical", "choices": [True, False]}}))
    assert not make_sampler(unconditional, 0)._group


def test_spec_options_reach_the_sampler():
    tpe = make_sampler(spec(sampler={"name": "tpe", "n_startup_trials": 3, "constant_liar": False}), 0)
    assert tpe._n_startup_trials == 3 and not tpe._constant_liar


@pytest.mark.parametrize("n_trials, population", [(4, 4), (100, 20), (1000, 50)])
def test_nsga2_population_follows_a_short_study(n_trials, population):
    sampler = make_sampler(spec(sampler={"name": "nsga2"}, n_trials=n_trials), 0)
    assert sampler._population_size == population


def test_unknown_sampler_is_a_spec_error(tiny_spec):
    odd = dataclasses.replace(tiny_spec, sampler=dataclasses.replace(tiny_spec.sampler, name="cmaes"))
    with pytest.raises(SpecError, match="sampler 'cmaes' is not one of tpe, nsga2, gp, random, grid"):
        make_sampler(odd, 0)
