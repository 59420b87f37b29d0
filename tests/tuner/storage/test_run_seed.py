"""Per-run sampler seeds (tuner.storage.samplers.claim_run_seed; the sampler itself is tested in test_samplers.py).
A study's first `tuner run` uses the study's seed (reproducible); each later or concurrent run claims a distinct one,
registered on the study, so a re-run continues the configuration sequence instead of replaying it."""

from __future__ import annotations

import copy
import threading

import optuna

from tests.tuner.tiny import BASE
from tuner.storage.connect import open_storage
from tuner.storage.samplers import RUN_SEED_PREFIX, claim_run_seed, make_sampler, worker_seed
from tuner.study.loader import spec_from_dict


def test_the_first_run_keeps_the_study_seed_and_later_runs_get_distinct_ones(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'tuner.db'}")
    sid = optuna.create_study(storage=storage, study_name="s")._study_id
    seeds = [claim_run_seed(storage, sid, 7, f"host:{pid}") for pid in (1, 2, 3)]
    assert seeds[0] == 7 and len(set(seeds)) == 3
    assert seeds[1] == worker_seed(7, "run1") and seeds[2] == worker_seed(7, "run2")
    stored = {k: v for k, v in storage.get_study_system_attrs(sid).items() if k.startswith(RUN_SEED_PREFIX)}
    assert stored == {f"{RUN_SEED_PREFIX}{k}:host:{k + 1}": s for k, s in enumerate(seeds)}
    assert claim_run_seed(storage, sid, None, "host:4") is None  # an unseeded sampler never replays


def test_concurrent_claims_never_share_a_seed(storage_url):
    storage = open_storage(storage_url)
    sid = optuna.create_study(storage=storage, study_name="s")._study_id
    got: list[int | None] = []
    threads = [
        threading.Thread(target=lambda i=i: got.append(claim_run_seed(open_storage(storage_url), sid, 0, f"h:{i}")))
        for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6 and len(set(got)) == 6 and 0 in got


def test_a_claimed_seed_continues_rather_than_replays_the_sequence():
    d = copy.deepcopy(BASE)
    d["sampler"] = {"name": "random", "seed": 0}
    spec = spec_from_dict(d, where="test.yaml")

    def draws(seed):
        study = optuna.create_study(sampler=make_sampler(spec, seed))
        return [study.ask().suggest_float("x", 0, 1) for _ in range(4)]

    assert draws(0) == draws(0)  # the same seed replays: what a second run used to do
    assert not set(draws(0)) & set(draws(worker_seed(0, "run1")))
