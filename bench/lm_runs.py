"""Training runs for the quality and fidelity benches: each run in its own process, spread over the GPUs of the
host (several per GPU), measured the same way (val PPL on the same windows, tokens/s, NVML per-process peak).

A job is a JSON-ready dict: {"id", "model": "phase1" | "dense", "config": {...fields}, "train_tokens",
"eval_tokens", "data": DataSource fields, "cache_dir"}; a job with "script": "NAME.py" runs that script of bench/
instead (same `--job JOB.json --result RESULT.json` protocol, see `child_main`). `run_pool` writes one JSON line
per finished job to `jsonl` as soon as it ends (so a run stopped at its time limit still returns what finished)
and returns them all. A run that diverged (NumericalInstabilityError, a non-finite loss) is recorded with
"diverged": true and no figures: callers never report a figure from it.

    python bench/lm_runs.py --job JOB.json --result RESULT.json   # one run (what run_pool starts per job)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the project's packages before anything in bench/

from bench._common import write_json  # noqa: E402

NVML_WATCH_CEILING_GIB = 1000.0  # the bench only watches the peak; no ceiling is enforced


def build_config(job: dict):
    from model.config import Phase1Config
    from model.dense_config import DenseConfig

    cls = DenseConfig if job["model"] == "dense" else Phase1Config
    return cls.from_dict(job["config"], where=f"job {job['id']}")


def run_one(job: dict) -> dict:
    """Train and evaluate one job in this process; the result dict (JSON-ready)."""
    import torch

    from model.data import DataSource, prepare_data
    from model.errors import NumericalInstabilityError
    from model.train import train_and_evaluate

    torch.set_num_threads(max(1, int(os.environ.get("BENCH_THREADS", "2"))))
    config = build_config(job)
    data = prepare_data(DataSource(**job["data"]), config.vocab_size, job["cache_dir"])
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    guard = None
    if on_gpu:
        from tuner.vram.guard import VramGuard

        guard = VramGuard(NVML_WATCH_CEILING_GIB, device_uuid=str(torch.cuda.get_device_properties(0).uuid))
        guard.start()
    out: dict = {"id": job["id"], "model": job["model"], "config": config.to_dict(), "device": device,
                 "train_tokens_asked": job["train_tokens"]}
    from tuner.study.spec import StepMode

    step = StepMode(job.get("step", "eager"))  # bench/claims.py --step sets it on the Phase 1 quality runs
    out["step"] = step.value
    t0 = time.perf_counter()
    try:
        result = train_and_evaluate(config, data, train_tokens=job["train_tokens"], eval_tokens=job["eval_tokens"],
                                    device=device, eval_points=job.get("eval_points", ()),
                                    compile_step=step.compile_step, cuda_graph_step=step.cuda_graph_step)
    except NumericalInstabilityError as exc:
        out.update(diverged=True, error=str(exc).splitlines()[0], wall_s=time.perf_counter() - t0)
        return out
    finally:
        if guard is not None:
            guard.stop()
    finite = math.isfinite(result.val_loss)
    out.update(
        diverged=not finite,
        val_loss=result.val_loss if finite else None, val_ppl=result.val_ppl if finite else None,
        tokens_per_s=result.tokens_per_s, train_tokens=result.train_tokens, epochs=result.epochs,
        steps=result.steps, eval_tokens=result.eval_tokens, peak_torch_gib=result.peak_torch_gib,
        peak_reserved_gib=result.peak_reserved_gib,
        nvml_peak_gib=guard.peak_gib if guard is not None and guard.n_seen else None,
        param_counts=result.param_counts, curve=result.curve,
        diagnostics={k: v for k, v in result.diagnostics.items() if isinstance(v, (int, float)) or v is None},
        wall_s=time.perf_counter() - t0,
    )
    return out


def run_pool(jobs: list[dict], *, gpus: list[int | None], per_gpu: int | list[int], jsonl: Path, work: Path,
             deadline_s: float | None = None, log=print) -> list[dict]:
    """Run `jobs` with `per_gpu` processes on each GPU of `gpus` (None: one CPU slot), longest first.

    per_gpu: one count for every GPU, or one per entry of `gpus`. A job with "gpus": [...] runs only on those.
    Each finished job's result is appended to `jsonl` at once. Jobs still running at `deadline_s` (seconds from the
    call) are killed and recorded with "killed": true; jobs never started are left out.
    """
    work.mkdir(parents=True, exist_ok=True)
    pending = sorted(jobs, key=lambda j: -j.get("cost", j["train_tokens"]))
    for j in pending:
        if "script" in j and not (Path(__file__).resolve().parent / j["script"]).is_file():
            raise ValueError(f"job {j['id']}: script {j['script']!r} is not a file in bench/")
        if "gpus" in j and not set(j["gpus"]) & set(gpus):
            raise ValueError(f"job {j['id']}: pinned to GPUs {j['gpus']}, none of which is in {gpus}")
    counts = per_gpu if isinstance(per_gpu, list) else [per_gpu] * len(gpus)
    if len(counts) != len(gpus):
        raise ValueError(f"per_gpu: {len(counts)} counts for {len(gpus)} GPUs")
    # round-robin over the GPUs, so that a few jobs spread out before any GPU takes a second one
    slots = [g for i in range(max(counts)) for g, c in zip(gpus, counts) if i < c]
    running: dict[int, tuple[subprocess.Popen, dict, float, Path]] = {}
    results: list[dict] = []
    start = time.monotonic()

    def finish(slot: int, killed: bool = False) -> None:
        proc, job, t_start, result_path = running.pop(slot)
        if result_path.exists():
            res = json.loads(result_path.read_text())
        else:
            res = {"id": job["id"], "model": job["model"], "diverged": False, "failed": True,
                   "error": (work / f"{job['id']}.log").read_text()[-2000:] if (work / f"{job['id']}.log").exists()
                   else f"exit {proc.returncode}"}
        if killed:
            res.update(killed=True)
        res["gpu"] = slots[slot]
        results.append(res)
        with open(jsonl, "a") as fh:
            fh.write(json.dumps(res) + "\n")
        ppl = f"ppl {res['val_ppl']:.1f}" if res.get("val_ppl") is not None else "finished"  # a probe has no PPL
        state = "killed" if killed else ("diverged" if res.get("diverged") else ("failed" if res.get("failed")
                                                                                else ppl))
        log(f"[{time.monotonic() - start:6.0f}s] done {job['id']} on gpu {slots[slot]}: {state} "
            f"({time.monotonic() - t_start:.0f} s)")

    while pending or running:
        for slot in range(len(slots)):
            if slot in running:
                continue
            job = next((j for j in pending if slots[slot] in j.get("gpus", [slots[slot]])), None)
            if job is None:
                continue
            pending.remove(job)
            job_path, result_path = work / f"{job['id']}.job.json", work / f"{job['id']}.result.json"
            job_path.write_text(json.dumps(job))
            result_path.unlink(missing_ok=True)
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            if slots[slot] is not None:
                env["CUDA_VISIBLE_DEVICES"] = str(slots[slot])
            script = Path(__file__).resolve().parent / job["script"] if "script" in job else Path(__file__)
            with open(work / f"{job['id']}.log", "w") as logf:
                proc = subprocess.Popen([sys.executable, str(script), "--job", str(job_path), "--result",
                                         str(result_path)], env=env, stdout=logf, stderr=subprocess.STDOUT)
            running[slot] = (proc, job, time.monotonic(), result_path)
            log(f"[{time.monotonic() - start:6.0f}s] start {job['id']} on gpu {slots[slot]}")
        for slot in list(running):
            if running[slot][0].poll() is not None:
                finish(slot)
        if deadline_s is not None and time.monotonic() - start > deadline_s:
            for slot in list(running):
                running[slot][0].kill()
                running[slot][0].wait()
                finish(slot, killed=True)
            break
        time.sleep(0.5)
    return results


def gpu_list(spec: str) -> list[int | None]:
    """'all' -> every visible CUDA device (or [None] without one: CPU); '0,2' -> those indices."""
    if spec == "all":
        import torch

        n = torch.cuda.device_count()
        return list(range(n)) if n else [None]
    return [int(x) for x in spec.split(",")]


def average_ranks(values: list[float]) -> list[float]:
    """Ranks 1..n of `values` (ties share their mean rank); +inf ranks last (a diverged run is the worst)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (Pearson of average ranks); needs at least 3 pairs and some spread."""
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"spearman: needs >= 3 pairs of equal length, got {len(x)} and {len(y)}")
    rx, ry = average_ranks(x), average_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        raise ValueError("spearman: one side has no spread (all values tied)")
    return cov / math.sqrt(vx * vy)


def device_header() -> dict:
    """bench/_common.py's header (device, torch, python) plus how many GPUs the runs could spread over."""
    import torch

    from bench._common import device_header as common_header

    return {**common_header(), "n_gpus": torch.cuda.device_count()}


def child_main(argv: list[str] | None, run, description: str) -> int:
    """`--job JOB.json --result RESULT.json`: run(job) -> the result dict, written atomically; an exception is
    recorded as {"failed": true, "error"} (the traceback goes to the job's log). What run_pool starts per job."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--job", required=True, type=Path)
    p.add_argument("--result", required=True, type=Path)
    args = p.parse_args(argv)
    job = json.loads(args.job.read_text())
    try:
        res = run(job)
    except Exception as exc:  # noqa: BLE001 - any failure of one run is recorded as that run's result
        traceback.print_exc()
        res = {"id": job["id"], "model": job["model"], "diverged": False, "failed": True,
               "error": f"{type(exc).__name__}: {exc}"}
    write_json(args.result, res)  # atomically: run_pool reads a result file only once it is whole
    return 0


def main(argv: list[str] | None = None) -> int:
    return child_main(argv, run_one, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
