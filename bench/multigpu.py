"""One worker per GPU: throughput with one GPU against all of them, and a worker killed under `tuner launch`.

    python bench/multigpu.py --study studies/gpu_ceiling_demo.yaml --trials 6 --out DIR   # writes DIR/multigpu.json

Runs `tuner launch STUDY --gpus 0` and then `--gpus all` on fresh SQLite studies with the same settings (same
trial count), timing each from launch to exit (trials completed per hour). In the `--gpus all` run, one worker is
SIGKILLed once its first trial is under way; `launch` must restart it (heartbeat 5 s, grace 20 s, so the killed
worker's trial is failed and retried quickly), and the study must end with every trial
accounted for (none RUNNING, none missing). NVML is asked which processes use which GPU while workers run.
On a host with one GPU the two throughputs measure the same thing: the JSON says how many GPUs there were.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo's packages (the project is not pip-installed)

from bench._common import device_name, write_json  # noqa: E402


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=False)]
    except psutil.NoSuchProcess:
        return []


def _gpu_processes() -> dict[int, list[int]]:
    import pynvml

    pynvml.nvmlInit()
    try:
        return {i: sorted(p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(i)))
                for i in range(pynvml.nvmlDeviceGetCount())}
    finally:
        pynvml.nvmlShutdown()


def _trials(storage: str, name: str) -> list[dict]:
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    return [{"number": t.number, "state": t.state.name, "end_reason": t.user_attrs.get("end_reason"),
             "retry_of": t.system_attrs.get("failed_trial")} for t in study.trials]


def run_launch(study: Path, name: str, gpus: str, trials: int, workdir: Path, kill_one: bool) -> dict:
    storage = f"sqlite:///{workdir / 'study.db'}"
    env = {**os.environ, "TUNER_STORAGE": storage, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-c", "import sys; from tuner.cli import main; sys.exit(main())",
           "launch", str(study), "--gpus", gpus, "--n-trials", str(trials), "--heartbeat-s", "5", "--grace-s", "20"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed, gpu_map = None, None
    while proc.poll() is None:
        time.sleep(1.0)
        workers = _children(proc.pid)
        if workers and gpu_map is None and time.monotonic() - t0 > 20:
            gpu_map = _gpu_processes()
        if kill_one and killed is None and workers and time.monotonic() - t0 > 25:
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
    out = proc.stdout.read()
    wall = time.monotonic() - t0
    trials_rows = _trials(storage, name)
    finished = [t for t in trials_rows if t["state"] in ("COMPLETE", "PRUNED")]
    return {"gpus": gpus, "wall_s": wall, "exit_code": proc.returncode, "trials": trials_rows,
            "finished": len(finished), "running_left": sum(t["state"] == "RUNNING" for t in trials_rows),
            "trials_per_hour": len(finished) / wall * 3600, "killed_worker_pid": killed,
            "nvml_processes_by_gpu": gpu_map, "restarted": "restart" in out.lower(), "log_tail": out[-3000:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", type=Path, default=ROOT / "studies" / "gpu_ceiling_demo.yaml")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import yaml

    name = yaml.safe_load(args.study.read_text())["name"]
    n_gpus = len(_gpu_processes())
    rows = {}
    for label, gpus, kill in (("one", "0", False), ("all", "all", True)):
        with tempfile.TemporaryDirectory() as d:
            rows[label] = run_launch(args.study.resolve(), name, gpus, args.trials, Path(d), kill)
        print(label, {k: v for k, v in rows[label].items() if k not in ("trials", "log_tail")}, flush=True)
    all_run = rows["all"]
    lost = args.trials - all_run["finished"]
    result = {
        "device": device_name(), "n_gpus": n_gpus, "command": " ".join(sys.argv),
        "trials_per_hour_one": rows["one"]["trials_per_hour"], "trials_per_hour_all": all_run["trials_per_hour"],
        "restarted_worker_lost_trials": lost, "runs": rows,
        "note": ("one GPU on this host: 'all' is the same single GPU, so the ratio is not a multi-GPU figure"
                 if n_gpus == 1 else ""),
    }
    write_json(args.out / "multigpu.json", result, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1, default=str))
    return 0 if lost == 0 and all_run["running_left"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
