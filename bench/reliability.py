"""Reliability figures from real runs: SIGKILL detection latency, results lost in a Postgres restart, load
(8 worker processes x 25 trials on one Postgres study of tiny real models), SIGTERM exit time, bad-input fuzzing.

    python bench/reliability.py --out DIR [--grace-s 120] [--heartbeat-s 30] [--workers 8] [--per-worker 25]

Writes DIR/reliability.json with exactly the keys
  grace_period_s, sigkill_detect_s, postgres_restart_lost_results, load_trials, load_errors, lost_results,
  trials_per_s, overhead_ms_per_trial, sigterm_exit_s, fuzz_cases, fuzz_tracebacks
and DIR/reliability_details.json with what each figure came from. Needs the local Postgres the tests use
($TUNER_TEST_PG, default postgres@127.0.0.1:5432) and the right to restart it (pg_ctlcluster); it is running
again when this script ends, whatever happened. Runs on CPU (2 cores: about 10-15 minutes with the product's
120 s grace period). The measurement code is shared with tests/reliability/ (testing/harness.py).

Figures:
  grace_period_s / sigkill_detect_s: heartbeat grace period used, and seconds from SIGKILL of a worker mid-trial
    to its trial being FAIL in storage (failed by another worker's heartbeat check, which then re-runs it).
  postgres_restart_lost_results: trials of a fault-free study left FAIL or RUNNING after the server was stopped
    for 6 s and started again under 2 workers (a result lost = a trial that must be run again or never finishes).
  load_trials: trials finished COMPLETE/PRUNED of the workers x per-worker requested; lost_results: requested
    minus those, plus trials left RUNNING; load_errors: storage error lines in the workers' output plus workers
    that exited non-zero; trials_per_s: finished trials / (last end - first start); overhead_ms_per_trial: median
    over trials of (start -> complete in storage) minus the trial runner's train+eval wall time (`trial_wall_s`).
  sigterm_exit_s: the slower of `tuner worker` and `tuner launch --workers 2` from SIGTERM mid-trial to exit.
  fuzz_cases / fuzz_tracebacks: generated malformed study/preset files through the CLI, and how many tracebacks.

Second round (issue 17; testing/scenarios.py, the same code tests/reliability/ asserts on), under "scenarios", one
entry per scenario with exit codes, exit / detection seconds and the four counts each study is judged by
(lost, duplicated, stuck_running, budget_overshoot; goal 0), and their sums at the top level:
  misconfigured_worker: data folder moved away / --cache-dir a file: exit code and seconds, trials counted after.
  pause_past_grace: SIGSTOP past the grace period (6 s) then SIGCONT: detection latency, the paused worker's exit.
  outage_launch_restart: a worker SIGKILLed while Postgres is down; launch restarts it: launch's exit code.
  sigterm_during_outage: `tuner worker` and `tuner run` get SIGTERM 2 s into an outage: exit code and seconds.
  concurrent_starts: 4 workers started at once on 2 trials, on Postgres and on SQLite: the overshoot.
  concurrent_reruns: `tuner run` of a seeded study, then 2 runs at once of the same file: repeated configurations.
  read_only_sqlite: a chattr +i SQLite file: exit code and seconds to the one-line error.
  scenario_trials_lost, scenario_duplicated, scenario_stuck_running, scenario_budget_overshoot: the sums.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TRITON_INTERPRET", "1")

from bench._common import write_json  # noqa: E402

KEYS = ("grace_period_s", "sigkill_detect_s", "postgres_restart_lost_results", "load_trials", "load_errors",
        "lost_results", "trials_per_s", "overhead_ms_per_trial", "sigterm_exit_s", "fuzz_cases", "fuzz_tracebacks",
        "scenarios", "scenario_trials_lost", "scenario_duplicated", "scenario_stuck_running",
        "scenario_budget_overshoot")
COUNTS = ("lost", "duplicated", "stuck_running", "budget_overshoot")


def run_round_two(work: Path) -> tuple[dict, dict]:
    """The second-round scenarios (testing/scenarios.py): (figures per scenario, details for the details file)."""
    from testing import harness as h
    from testing import scenarios as sc

    out: dict = {}
    details: dict = {}

    def r2(x: float) -> float:
        return round(float(x), 2)

    with h.fresh_pg_database() as url:
        m = sc.measure_misconfigured_worker(url, work)
    out["misconfigured_worker"] = {
        **{f"{k}_exit_code": v["exit_code"] for k, v in m["runs"].items()},
        **{f"{k}_exit_s": r2(v["exit_s"]) for k, v in m["runs"].items()},
        **{f"{k}_counted_after": v["counted_after"] for k, v in m["runs"].items()},
        "fixed_worker_exit": m["fixed_exit"], **m["figures"]}
    details["misconfigured_worker"] = {k: v["output"][-600:] for k, v in m["runs"].items()}
    print(f"misconfigured worker: {out['misconfigured_worker']}", flush=True)

    with h.fresh_pg_database() as url:
        p = sc.measure_pause_past_grace(url, work)
    out["pause_past_grace"] = {"grace_s": 6, "detect_s": r2(p["detect_s"]), "paused_s": r2(p["paused_s"]),
                               "paused_worker_exit": p["a_exit"], "other_worker_exit": p["b_exit"],
                               "cannot_tell_errors": p["a_log"].count("Cannot tell"),
                               "tracebacks": p["a_log"].count("Traceback"), **p["figures"]}
    details["pause_past_grace"] = p["a_log"][-2000:]
    print(f"pause past grace: {out['pause_past_grace']}", flush=True)

    with h.fresh_pg_database() as url:
        lo = sc.measure_outage_during_launch_restart(url, work)
    out["outage_launch_restart"] = {"outage_s": r2(lo["outage_s"]), "launch_exit": lo["launch_exit"],
                                    "worker_restarted": lo["restarted"], "user_error_exit": lo["user_error_exit"],
                                    **lo["figures"]}
    details["outage_launch_restart"] = lo["log"][-3000:]
    print(f"outage during launch restart: {out['outage_launch_restart']}", flush=True)

    entry: dict = {}
    for command in ("worker", "run"):
        for attempt in range(1, 4):  # another session may start the server during the outage: then measure again
            with h.fresh_pg_database() as url:
                st = sc.measure_sigterm_during_outage(url, work, command=command)
            if st["outage_held"]:
                break
        entry[f"{command}_attempts"] = attempt
        entry[f"{command}_outage_held"] = st["outage_held"]
        entry[f"{command}_exit_code"] = st["exit_code"]
        entry[f"{command}_exit_s"] = r2(st["exit_s"])
        entry[f"{command}_finisher_exit"] = st["finisher_exit"]
        for k in COUNTS:
            entry[k] = entry.get(k, 0) + st["figures"][k]
        details[f"sigterm_during_outage_{command}"] = st["logs"][-2000:]
    out["sigterm_during_outage"] = entry
    print(f"sigterm during outage: {entry}", flush=True)

    entry = {}
    for backend in ("postgres", "sqlite"):
        for round_ in range(3):
            if backend == "postgres":
                with h.fresh_pg_database() as url:
                    cs = sc.measure_concurrent_starts(url, work, n_workers=4, n_trials=2)
            else:
                cs = sc.measure_concurrent_starts(f"sqlite:///{work / f'starts{round_}.db'}", work, n_workers=4,
                                                  n_trials=2)
            entry[f"{backend}_overshoot_round{round_}"] = cs["figures"]["budget_overshoot"]
            for k in COUNTS:
                entry[k] = entry.get(k, 0) + cs["figures"][k]
    out["concurrent_starts"] = {"workers": 4, "n_trials": 2, **entry}
    print(f"concurrent starts: {out['concurrent_starts']}", flush=True)

    rr = sc.measure_reruns(f"sqlite:///{work / 'reruns.db'}", work, first=3, concurrent=2)
    out["concurrent_reruns"] = {"exit_codes": rr["exit_codes"], "repeated_configurations": len(rr["repeats"]),
                                **rr["figures"]}
    details["concurrent_reruns"] = [(t.number, t.params) for t in rr["accounting"]["trials"]]
    print(f"re-runs: {out['concurrent_reruns']}", flush=True)

    ro = sc.measure_read_only_sqlite(work)
    out["read_only_sqlite"] = {"exit_code": ro["exit_code"], "exit_s": r2(ro["exit_s"])}
    details["read_only_sqlite"] = ro["output"][-600:]
    print(f"read-only sqlite: {out['read_only_sqlite']}", flush=True)
    return out, details


def run_fuzz(folder: Path, n_studies: int = 450, n_random: int = 300, n_presets: int = 300) -> dict:
    from hypothesis import HealthCheck, given, settings

    from testing import fuzz

    tally = fuzz.Tally()
    base = settings(deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))

    @settings(base, max_examples=n_studies)
    @given(fuzz.mutated_study())
    def studies(text):
        fuzz.check_study_text(text, folder, tally, must_fail=True)

    @settings(base, max_examples=n_random)
    @given(fuzz.random_documents)
    def documents(text):
        fuzz.check_study_text(text, folder, tally, must_fail=False)

    @settings(base, max_examples=n_presets)
    @given(fuzz.mutated_preset())
    def presets(text):
        fuzz.check_preset_text(text, folder, tally)

    for f in (studies, documents, presets):
        f()
    return {"cases": tally.cases, "tracebacks": tally.tracebacks, "violations": tally.failures}


def main(argv: list[str] | None = None) -> int:
    import tuner.storage.connect as st
    from testing import harness as h

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--grace-s", type=int, default=st.GRACE_PERIOD_S, help="heartbeat grace period for the "
                    f"SIGKILL measurement (default: the product's {st.GRACE_PERIOD_S})")
    ap.add_argument("--heartbeat-s", type=int, default=st.HEARTBEAT_INTERVAL_S,
                    help=f"heartbeat interval (default: the product's {st.HEARTBEAT_INTERVAL_S})")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--per-worker", type=int, default=25)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from model.data import DataSource, prepare_data

    h.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    prepare_data(DataSource(kind="stdlib", max_bytes=262144), 512, h.CACHE_DIR)
    details: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    h.ensure_pg_running()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)

            t = time.monotonic()
            fz = run_fuzz(work)
            details["fuzz"] = {**fz, "seconds": time.monotonic() - t}
            print(f"fuzz: {fz['cases']} cases, {fz['tracebacks']} tracebacks", flush=True)

            with h.fresh_pg_database() as url:
                r = h.measure_sigkill(url, work, grace_s=args.grace_s, heartbeat_s=args.heartbeat_s)
                acc = r["accounting"]
                details["sigkill"] = {"detect_s": r["detect_s"], "grace_s": r["grace_s"],
                                      "heartbeat_s": r["heartbeat_s"], "by_state": acc["by_state"],
                                      "retry_of_victim": [t.system_attrs.get("retry_history") for t in acc["trials"]
                                                          if t.system_attrs.get("failed_trial") == r["victim"]],
                                      "orphans_gone": r["orphans_gone"], "waiting_worker_exit": r["b_exit"],
                                      "victim_end_reason": next(t.user_attrs.get("end_reason") for t in acc["trials"]
                                                                if t.number == r["victim"])}
                print(f"sigkill: detected after {r['detect_s']:.1f} s (grace {r['grace_s']} s)", flush=True)

            with h.fresh_pg_database() as url:
                w = h.measure_sigterm_worker(url, work)
            with h.fresh_pg_database() as url:
                la = h.measure_sigterm_launch(url, work)
            details["sigterm"] = {"worker": {"exit_code": w["exit_code"], "exit_s": w["exit_s"],
                                             "by_state_after": w["after_stop"]["by_state"]},
                                  "launch": {"exit_code": la["exit_code"], "exit_s": la["exit_s"],
                                             "by_state_after": la["accounting"]["by_state"]}}
            print(f"sigterm: worker {w['exit_s']:.1f} s (exit {w['exit_code']}), launch {la['exit_s']:.1f} s "
                  f"(exit {la['exit_code']})", flush=True)

            with h.fresh_pg_database() as url:
                pr = h.measure_pg_restart(url, work, n_workers=2, n_trials=6, outage_s=6.0)
            details["postgres_restart"] = {"outage_s": pr["outage_s"], "exit_codes": pr["exit_codes"],
                                           "by_state": pr["accounting"]["by_state"], "lost": pr["lost_results"],
                                           "log_tail": pr["logs"][-3000:]}
            print(f"postgres restart: lost {len(pr['lost_results'])}, worker exits {pr['exit_codes']}", flush=True)

            with h.fresh_pg_database() as url:
                ld = h.measure_load(url, work, n_workers=args.workers, per_worker=args.per_worker)
            by = ld["accounting"]["by_state"]
            done = by.get("COMPLETE", 0) + by.get("PRUNED", 0)
            details["load"] = {"workers": args.workers, "per_worker": args.per_worker, "by_state": by,
                               "exit_codes": ld["exit_codes"], "wall_s": ld["wall_s"],
                               "storage_error_lines": ld["storage_errors"][:20],
                               "overhead_ms_mean": ld["overhead_ms_mean"],
                               "distinct_configurations": len({tuple(sorted(t.params.items()))
                                                               for t in ld["accounting"]["trials"]})}
            print(f"load {args.workers}x{args.per_worker}: {done}/{ld['total']} finished, "
                  f"{ld['trials_per_s']:.3f} trials/s, overhead {ld['overhead_ms_per_trial']:.0f} ms/trial", flush=True)

            scenarios, details["round_two"] = run_round_two(work)
    finally:
        h.ensure_pg_running()

    figures = {
        "grace_period_s": r["grace_s"],
        "sigkill_detect_s": round(r["detect_s"], 2),
        "postgres_restart_lost_results": len(pr["lost_results"]),
        "load_trials": done,
        "load_errors": len(ld["storage_errors"]) + sum(1 for c in ld["exit_codes"] if c != 0),
        "lost_results": max(0, ld["total"] - done) + by.get("RUNNING", 0),
        "trials_per_s": round(ld["trials_per_s"], 4),
        "overhead_ms_per_trial": round(ld["overhead_ms_per_trial"], 1) if ld["overhead_ms_per_trial"] is not None
        else None,
        "sigterm_exit_s": round(max(w["exit_s"], la["exit_s"]), 2),
        "fuzz_cases": fz["cases"],
        "fuzz_tracebacks": fz["tracebacks"],
        "scenarios": scenarios,
        **{f"scenario_{'trials_' if k == 'lost' else ''}{k}": sum(v.get(k, 0) for v in scenarios.values())
           for k in COUNTS},
    }
    assert tuple(figures) == KEYS
    write_json(args.out / "reliability.json", figures)
    write_json(args.out / "reliability_details.json", details)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
