"""Storage load: the tuner's per-trial storage overhead beside bare Optuna's in the same run, and many workers through
one `tuner proxy` (issue 14 item 4).

    python bench/storage_load.py [--out bench/results] [--workers 8] [--per-worker 25] [--rounds 2]
                                 [--proxy-workers 32] [--proxy-per-worker 5] [--proxy-threads 4]

Writes OUT/storage_load.json:
  "load": 8 `tuner worker` processes x 25 tiny real trials (testing.harness.measure_load), then 8 bare-Optuna
    processes x 25 trials (testing.storage_load.measure_bare_load: Optuna's RDBStorage + cache layer, the same two
    parameters, an objective that works for the tuner round's median trial_wall_s) three ways: "bare" sleeps
    through the work without heartbeat (the strict baseline: its storage calls have the CPU to themselves),
    "bare_heartbeat" sleeps with Optuna's heartbeat (30 s / 120 s, as the tuner runs), "bare_busy" busy-waits on
    the CPU (as contended as the tuner, whose trial child trains meanwhile), "bare_train" does the tuner's job with
    bare Optuna: trains the same tiny model in-process with the same trainer, with Optuna's heartbeat (its
    trial_wall_s is the trainer call); `rounds` times, in turn, each run on a fresh database of the same local
    Postgres. Overhead per trial = (start -> complete in storage) - the trial's own
    work (trial_wall_s); ms_per_trial figures are medians over all trials of all kept rounds; ratio = tuner / bare,
    ratio_vs_* against the others. Goal: ratio <= 1.25.
  "proxy": `proxy_workers` processes of trivial trials (the product's grpc:// client and `study.optimize` with a
    sleeping 0.2 s objective: no trial child, so 32 fit on a small machine) through one real `tuner proxy`, with the
    database's connections counted from pg_stat_activity every 0.1 s; then the same workers straight to the
    database for comparison. Goal: 0 errors, a few connections (the proxy opens at most --proxy-threads).
  "proxy_sigkill": a worker SIGKILLed mid-trial behind the proxy (heartbeat 1 s, grace 6 s): detect_s until the
    proxy failed its trial (`worker_lost`), and the retry's state (the other worker re-runs it).
Each section can be skipped (--skip-load, --skip-proxy, --skip-sigkill); a skipped one keeps its old figures.
Runs on CPU against the local Postgres the tests use ($TUNER_TEST_PG); 8 x 25 takes a few minutes per round on 2
cores. The measurement code is shared with tests/reliability/test_storage_load.py (testing/storage_load.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TRITON_INTERPRET", "1")

from bench._common import RESULTS, device_header, write_json  # noqa: E402

TARGET_RATIO = 1.25
SECTIONS = ("load", "proxy", "proxy_sigkill")
# (key, Optuna heartbeat on, the objective's work): "bare" is the strict baseline the ratio is taken against.
BARE_RUNS = (
    ("bare", False, "sleep"),
    ("bare_heartbeat", True, "sleep"),
    ("bare_busy", False, "busy"),
    ("bare_train", True, "train"),
)


def _clean(run: dict, workers: int) -> bool:
    return run["exit_codes"] == [0] * workers and not run["errors"]


def _tuner_run(work: Path, workers: int, per_worker: int) -> dict:
    from testing import harness as h
    from testing import storage_load as sl

    with sl.fresh_database() as url:
        ld = h.measure_load(url, work, n_workers=workers, per_worker=per_worker)
    trials = ld["accounting"]["trials"]
    walls = sorted(float(t.user_attrs["trial_wall_s"]) for t in trials if "trial_wall_s" in t.user_attrs)
    ov = sl.overheads_ms(trials)
    return {
        "by_state": ld["accounting"]["by_state"],
        "exit_codes": ld["exit_codes"],
        "errors": ld["storage_errors"][:10],
        "wall_s": round(ld["wall_s"], 1),
        "trial_wall_s_median": round(walls[len(walls) // 2], 3) if walls else 0.5,
        "overhead_ms": sl.summary(ov),
        "overheads_ms_all": ov,
    }


def _bare_run(work: Path, workers: int, per_worker: int, work_s: float, heartbeat: bool, kind: str) -> dict:
    from testing import storage_load as sl

    with sl.fresh_database() as url:
        b = sl.measure_bare_load(
            url, work, n_workers=workers, per_worker=per_worker, work_s=work_s, heartbeat=heartbeat, work=kind
        )
    b["errors"] = b["errors"][:10]
    return b


def _until_clean(what: str, run: Callable[[], dict], workers: int, attempts: int, discarded: list[dict]) -> dict:
    """`run()` until it has no error and no non-zero exit (the shared Postgres may be stopped by another suite
    meanwhile); each failed attempt is kept in `discarded` with its errors."""
    for _ in range(attempts):
        try:
            r = run()
        except Exception as e:  # noqa: BLE001 - e.g. the database went away mid-setup: the run is redone
            discarded.append({"run": what, "exception": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"})
        else:
            if _clean(r, workers):
                return r
            discarded.append({"run": what, "exit_codes": r["exit_codes"], "errors": r["errors"][:3]})
        print(f"{what} discarded: {json.dumps(discarded[-1])[:300]}", flush=True)
    raise SystemExit(f"{what} failed {attempts} times; no figures written")


def run_load(work: Path, workers: int, per_worker: int, rounds: int, attempts: int = 6) -> dict:
    """`rounds` rounds of: the tuner, then each of BARE_RUNS with the tuner run's median trial wall time as its
    work, each on a fresh database; a run with an error is redone (at most `attempts` times)."""
    from testing import storage_load as sl

    kept: list[dict] = []
    discarded: list[dict] = []
    for i in range(rounds):
        r = {
            "tuner": _until_clean(
                f"round {i} tuner", lambda: _tuner_run(work, workers, per_worker), workers, attempts, discarded
            )
        }
        work_s = r["tuner"]["trial_wall_s_median"]
        print(f"round {i}: tuner {r['tuner']['overhead_ms']['median']:.0f} ms/trial (work {work_s} s)", flush=True)
        for key, hb, kind in BARE_RUNS:
            r[key] = _until_clean(
                f"round {i} {key}",
                functools.partial(_bare_run, work, workers, per_worker, work_s, hb, kind),
                workers,
                attempts,
                discarded,
            )
            print(f"round {i}: {key} {r[key]['overhead_ms']['median']:.0f} ms/trial", flush=True)
        kept.append(r)
    pooled = {k: sorted(v for r in kept for v in r[k].pop("overheads_ms_all")) for k in kept[0]}
    med = {k: sl.summary(v)["median"] for k, v in pooled.items()}
    return {
        "workers": workers,
        "per_worker": per_worker,
        "rounds": rounds,
        "tuner_ms_per_trial": round(med["tuner"], 1),
        "bare_ms_per_trial": round(med["bare"], 1),
        "bare_heartbeat_ms_per_trial": round(med["bare_heartbeat"], 1),
        "bare_busy_ms_per_trial": round(med["bare_busy"], 1),
        "bare_train_ms_per_trial": round(med["bare_train"], 1),
        "ratio": round(med["tuner"] / med["bare"], 3),
        "ratio_vs_bare_heartbeat": round(med["tuner"] / med["bare_heartbeat"], 3),
        "ratio_vs_bare_busy": round(med["tuner"] / med["bare_busy"], 3),
        "ratio_vs_bare_train": round(med["tuner"] / med["bare_train"], 3),
        "target_ratio": TARGET_RATIO,
        "discarded_runs": discarded,
        "rounds_detail": kept,
    }


def run_proxy(work: Path, workers: int, per_worker: int, threads: int) -> dict:
    from testing import storage_load as sl

    out = {}
    discarded: list[dict] = []

    def one(direct: bool) -> dict:
        with sl.fresh_database() as url:
            r = sl.measure_proxy_load(
                url, work, n_workers=workers, per_worker=per_worker, mode="trivial", threads=threads, direct=direct
            )
        r.pop("accounting")
        r["errors"] = r["errors"][:10]
        return r

    for direct in (False, True):
        r = _until_clean("direct" if direct else "proxy", functools.partial(one, direct), workers, 4, discarded)
        out["direct" if direct else "proxy"] = r
        print(
            f"{'direct' if direct else 'proxy'}: {workers} workers, {r['by_state']}, errors {len(r['errors'])}, "
            f"max connections {r['max_db_connections']}",
            flush=True,
        )
    p, d = out["proxy"], out["direct"]
    done = p["by_state"].get("COMPLETE", 0)
    return {
        "workers": workers,
        "per_worker": per_worker,
        "mode": "trivial",
        "proxy_threads": threads,
        "trials": done,
        "errors": len(p["errors"]) + sum(1 for c in p["exit_codes"] if c != 0),
        "lost_trials": p["total"] - done,
        "max_db_connections": p["max_db_connections"],
        "direct_max_db_connections": d["max_db_connections"],
        "direct_errors": len(d["errors"]) + sum(1 for c in d["exit_codes"] if c != 0),
        "trials_per_s": round(p["trials_per_s"], 3),
        "direct_trials_per_s": round(d["trials_per_s"], 3),
        "overhead_ms_per_trial": round(p["overhead_ms"]["median"], 1),
        "direct_overhead_ms_per_trial": round(d["overhead_ms"]["median"], 1),
        "discarded_runs": discarded,
        "detail": out,
    }


def run_sigkill(work: Path) -> dict:
    """A worker SIGKILLed mid-trial behind the proxy: seconds until the proxy has failed its trial (heartbeat 1 s,
    grace 6 s, as tests/reliability run it), and whether the other worker re-ran it."""
    from testing import storage_load as sl

    discarded: list[dict] = []

    def one() -> dict:
        with sl.fresh_database() as url:
            r = sl.measure_sigkill_through_proxy(url, work)
        acc = r.pop("accounting")
        victim = next(t for t in acc["trials"] if t.number == r["victim"])
        retry = [t for t in acc["trials"] if t.system_attrs.get("failed_trial") == r["victim"]]
        ok = victim.user_attrs.get("end_reason") == "worker_lost" and [t.state.name for t in retry] == ["COMPLETE"]
        return {
            "exit_codes": [r["b_exit"], r["proxy_exit_code"]],
            "errors": [] if ok and r["beating"] else [r["logs"][-1500:]],
            "grace_s": r["grace_s"],
            "heartbeat_s": r["heartbeat_s"],
            "detect_s": round(r["detect_s"], 2),
            "victim_end_reason": victim.user_attrs.get("end_reason"),
            "retry_state": [t.state.name for t in retry],
            "heartbeats_recorded": r["beating"],
        }

    out = _until_clean("sigkill through the proxy", one, 2, 4, discarded)
    print(f"sigkill through the proxy: failed after {out['detect_s']} s (grace {out['grace_s']} s)", flush=True)
    return {**out, "discarded_runs": discarded}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--per-worker", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--proxy-workers", type=int, default=32)
    ap.add_argument("--proxy-per-worker", type=int, default=5)
    ap.add_argument("--proxy-threads", type=int, default=4)
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-proxy", action="store_true")
    ap.add_argument("--skip-sigkill", action="store_true")
    args = ap.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from model.data import DataSource, prepare_data
    from testing import harness as h

    h.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    prepare_data(DataSource(kind="stdlib", max_bytes=262144), 512, h.CACHE_DIR)
    result: dict = {
        **device_header(),
        "optuna": optuna.__version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = args.out / "storage_load.json"
    if path.exists():  # keep the other section when only one is re-measured
        old = json.loads(path.read_text())
        result.update({k: old[k] for k in SECTIONS if k in old})
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_load:
            result["load"] = run_load(Path(tmp), args.workers, args.per_worker, args.rounds)
        if not args.skip_proxy:
            result["proxy"] = run_proxy(Path(tmp), args.proxy_workers, args.proxy_per_worker, args.proxy_threads)
        if not args.skip_sigkill:
            result["proxy_sigkill"] = run_sigkill(Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("load", "proxy")}, indent=1))
    for k in SECTIONS:
        if k in result:
            print(k, json.dumps({a: b for a, b in result[k].items() if a not in ("rounds_detail", "detail")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
