"""Does a trial's measured memory depend on how many trials its child process ran before it? Over committed study
databases (no GPU needed: the figures were measured on the H100 when the studies ran).

A worker's trial child used to serve trial after trial until one ended badly (tuner.trial.runner's replacement
rule). Each trial's `worker` attr and start time order a worker's trials; a child's *age* at a trial is the number of
trials it trained before it in the same process (reset after an end that replaced the child: ceiling, OOM, timeout,
interrupt, crash, error). Configurations differ from trial to trial, so each trial's peak is divided by its own
pre-flight estimate (`predicted_peak_gib`, one formula for all) before ages are compared; the part outside the
allocator is NVML minus torch's peak, in GiB.

    python bench/child_age.py [--out bench/results/child_age.json]

Writes {"studies": [{"db", "study", "rows": [{"age", "n", "median_nvml_over_predicted",
"median_torch_over_predicted", "median_outside_allocator_gib"}]}], "command"}.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import median_or_none, write_json  # noqa: E402

# The end reasons after which tuner.trial.runner replaced the child (runner._REPLACE_AFTER, plus errors on CUDA),
# and trials that never reached a child (no end reason recorded: WAITING or running when a window closed).
REPLACED_AFTER = {"vram_ceiling", "oom", "timeout", "interrupted", "crash", "error"}
DBS = (
    ("bench/results/study_8gb/study_8gb.db", "phase1_8gb"),
    ("bench/results/study_8gb/presets/s24.db", None),
    ("bench/results/search_efficiency/tpe30.db", None),
    ("bench/results/search_efficiency/rand60.db", None),
    ("bench/results/search_efficiency/tpe30p.db", None),
)


def ages_of(trials: list[Any]) -> list[tuple[int, Any]]:
    """(child age, trial) for every trial that completed, in each worker's order of starting."""
    by_worker: dict[str, list[Any]] = collections.defaultdict(list)
    for t in trials:
        if t.user_attrs.get("worker") and t.datetime_start is not None:
            by_worker[t.user_attrs["worker"]].append(t)
    out = []
    for ts in by_worker.values():
        age = 0
        for t in sorted(ts, key=lambda t: t.datetime_start):
            reason = t.user_attrs.get("end_reason")
            trained = t.user_attrs.get("nvml_peak_gib") is not None
            if trained and reason == "complete":
                out.append((age, t))
            if trained:
                age += 1
            if reason is None or reason in REPLACED_AFTER:
                age = 0
    return out


def table(trials: list[Any]) -> list[dict[str, Any]]:
    """One row per child age: medians of NVML / predicted, torch / predicted and NVML - torch (GiB)."""
    groups: dict[int, list[Any]] = collections.defaultdict(list)
    for age, t in ages_of(trials):
        u = t.user_attrs
        if u.get("predicted_peak_gib") and u.get("torch_peak_gib") is not None and u.get("reference") is None:
            groups[age].append(u)
    rows = []
    for age in sorted(groups):
        us = groups[age]
        rows.append(
            {
                "age": age,
                "n": len(us),
                "median_nvml_over_predicted": median_or_none([u["nvml_peak_gib"] / u["predicted_peak_gib"] for u in us]),
                "median_torch_over_predicted": median_or_none(
                    [u["torch_peak_gib"] / u["predicted_peak_gib"] for u in us]
                ),
                "median_outside_allocator_gib": median_or_none([u["nvml_peak_gib"] - u["torch_peak_gib"] for u in us]),
            }
        )
    return rows


def main() -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/child_age.json")
    args = ap.parse_args()
    studies = []
    for db, name in DBS:
        if not Path(db).exists():
            raise SystemExit(f"{db}: missing; run from the repository root")
        storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
        for summary in optuna.get_all_study_summaries(storage):
            if name is not None and summary.study_name != name:
                continue
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            rows = table(study.trials)
            studies.append({"db": db, "study": summary.study_name, "rows": rows})
            for r in rows:
                print(
                    f"{summary.study_name:>14} age {r['age']}: n {r['n']:>2}  NVML/pred {r['median_nvml_over_predicted']:.3f}"
                    f"  torch/pred {r['median_torch_over_predicted']:.3f}  outside {r['median_outside_allocator_gib']:.3f} GiB"
                )
    write_json(Path(args.out), {"studies": studies, "command": "python bench/child_age.py"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
