"""Load: 8 real `tuner worker` processes share one Postgres study of 8 x 25 = 200 tiny real-model trials; every
trial is accounted for (COMPLETE/PRUNED, none RUNNING, FAILed or duplicated), the workers see zero storage
errors, and parallel workers do not spend their trials on the same configurations. About 90-120 s on 2 shared
cores. trials/s and the storage overhead per trial are printed here and reported by
`python bench/reliability.py --out DIR`."""

from __future__ import annotations

import pytest

from testing.harness import fresh_pg_database, measure_load

# Its module-scoped fixture runs once per pytest-xdist process: keep the module's tests on one (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("load")

N_WORKERS, PER_WORKER = 8, 25


@pytest.fixture(scope="module")
def load_run(tmp_path_factory):
    with fresh_pg_database() as url:
        yield measure_load(url, tmp_path_factory.mktemp("load"), n_workers=N_WORKERS, per_worker=PER_WORKER,
                           timeout_s=300)


def test_load_all_trials_accounted_zero_storage_errors(load_run):
    r = load_run
    acc = r["accounting"]
    assert r["exit_codes"] == [0] * N_WORKERS, r["logs"]
    assert r["storage_errors"] == [], r["storage_errors"]
    assert acc["duplicate_numbers"] == 0 and "RUNNING" not in acc["by_state"] and "WAITING" not in acc["by_state"]
    assert "FAIL" not in acc["by_state"], acc["by_state"]
    counted = sum(v for k, v in acc["by_state"].items() if k in ("COMPLETE", "PRUNED"))
    # The shared budget is taken under the study lock (tuner.trial.budget, tuner.storage.study_lock): exactly the
    # trials asked for, none lost, none extra, even with workers asking at the same instant.
    assert counted == r["total"], acc["by_state"]
    assert r["trials_per_s"] > 0 and r["overhead_ms_per_trial"] is not None
    print(f"load {N_WORKERS}x{PER_WORKER}: {counted} trials, {r['trials_per_s']:.3f} trials/s, overhead median "
          f"{r['overhead_ms_per_trial']:.0f} ms/trial, wall {r['wall_s']:.0f} s")


def test_parallel_workers_sample_distinct_configurations(load_run):
    """The study's sampler is seeded (random, seed 0) and its space continuous: independent draws never repeat a
    configuration, so a repeat means the workers replay one another's random sequence."""
    ts = [t for t in load_run["accounting"]["trials"] if "failed_trial" not in t.system_attrs]
    configs = [tuple(sorted(t.params.items())) for t in ts]
    repeats = len(configs) - len(set(configs))
    assert repeats == 0, f"{repeats} of {len(configs)} trials repeat another trial's configuration"
