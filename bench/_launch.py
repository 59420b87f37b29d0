"""What bench/packing.py and bench/multigpu.py share: a study file with a bench's overrides, the data prepared once
before any window, one `tuner launch` run for a fixed window (SIGTERM at its end, as a user would stop it) with NVML
sampled every second, and the trials that trained inside the window.

Counting: a trial counts when it is COMPLETE, reached the GPU (not `predicted_over_ceiling`:
tuner.trial.launch_view.is_trained) and completed inside the window. Trials in flight at the window's end are
interrupted and re-queued by launch; they count nowhere.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ENTRY = "import sys; from tuner.cli import main; sys.exit(main())"
TINY_STUDY = {  # CPU proof of the scripts: a two-layer model on the standard library's Python sources
    "name": "bench_tiny",
    "objectives": [
        {"metric": "val_ppl", "direction": "minimize"},
        {"metric": "peak_vram_gib", "direction": "minimize"},
    ],
    "vram_ceiling_gib": 1,
    "sampler": {"name": "tpe", "seed": 0},
    "n_trials": 100000,
    "model": {
        "vocab_size": 512,
        "d_model": 32,
        "n_layers": 1,
        "n_seq": 64,
        "batch_size": 4,
        "dtype": "float32",
        "loss_chunk_size": 0,
    },
    "search_space": {
        "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "ar_ssm_max_rank": {"type": "int", "low": 8, "high": 16, "step": 8},
    },
    "data": {"source": "stdlib", "max_bytes": 262144},
    "budget": {"train_tokens": 4096, "eval_tokens": 1024, "trial_timeout_s": 120},
}


def write_study(src: Path | None, out: Path, *, train_tokens: int | None, eval_tokens: int | None) -> dict[str, Any]:
    """The study of `src` (None: TINY_STUDY) with the bench's overrides written to `out`; returns the dict. n_trials
    is raised so the window, not the budget, ends a run."""
    data = yaml.safe_load(src.read_text()) if src is not None else dict(TINY_STUDY)
    data["n_trials"] = 100000
    budget = dict(data.get("budget") or {})
    if train_tokens is not None:
        budget["train_tokens"] = int(train_tokens)
    if eval_tokens is not None:
        budget["eval_tokens"] = int(eval_tokens)
    data["budget"] = budget
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return data


def prepare_workdir(
    src: Path | None, workdir: Path | None, prefix: str, *, train_tokens: int | None, eval_tokens: int | None
) -> tuple[Path, Path, dict[str, Any], Path, float]:
    """A bench's working folder (`workdir`, else a fresh temporary one named `prefix`...), its study.yaml
    (write_study of `src`) and its tokenized data (prepare, printed). Returns (work, study_file, study, cache,
    prepare's seconds)."""
    work = workdir or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    study_file = work / "study.yaml"
    data = write_study(src, study_file, train_tokens=train_tokens, eval_tokens=eval_tokens)
    cache = work / "cache"
    prep_s = prepare(study_file, cache)
    print(f"data prepared in {prep_s:.1f} s", flush=True)
    return work, study_file, data, cache, prep_s


def prepare(study_file: Path, cache_dir: Path) -> float:
    """Tokenize the study's data into `cache_dir` once (every window's workers then open the cache); seconds."""
    from model.data import prepare_data
    from tuner.study.loader import load_spec

    spec = load_spec(study_file)
    t0 = time.monotonic()
    prepare_data(spec.data, int(spec.model["vocab_size"]), str(cache_dir))
    return time.monotonic() - t0


class NvmlSampler:
    """Once a second: the memory of every compute process of the launch's process tree on every GPU (max per pid),
    each card's used memory (max), the GPUs' utilization. Processes outside the tree (an MPS server, another job)
    are listed apart. Does nothing where NVML does not start (CPU). Set `root_pid` once the launch runs."""

    def __init__(self) -> None:
        self.root_pid: int | None = None
        self.other_pids: set[int] = set()
        self.mps_server_pids: set[int] = set()  # nvidia-cuda-mps-server: one process on every GPU by design
        self.wrong_gpu: set[tuple[int, int, int]] = set()  # (pid, GPU seen on, its worker's --gpu)
        self.pid_max_gib: dict[int, float] = {}
        self.pid_gpus: dict[int, set[int]] = {}
        self.pid_gpu_max_gib: dict[tuple[int, int], float] = {}  # per (pid, GPU): tells a context from a listing
        self.gpu_total_max_gib: dict[int, float] = {}
        self.util: dict[int, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = False

    def __enter__(self) -> NvmlSampler:
        try:
            import pynvml

            pynvml.nvmlInit()
            self.available = True
        except Exception:  # noqa: BLE001 - no NVML here: a CPU run samples nothing
            return self
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.available:
            self._thread.join(5.0)
            import pynvml

            pynvml.nvmlShutdown()

    def _run(self) -> None:
        import pynvml

        from tuner.vram.nvml import compute_processes

        n = pynvml.nvmlDeviceGetCount()
        while not self._stop.wait(1.0):
            tree = _tree(self.root_pid)
            for i in range(n):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                for p in compute_processes(h):  # MPS clients included
                    if _is_mps_server(p.pid):  # serves every GPU's clients: not a worker on several GPUs
                        self.mps_server_pids.add(p.pid)
                        continue
                    if p.pid not in tree:
                        self.other_pids.add(p.pid)
                        continue
                    expected = _worker_gpu(p.pid)
                    if expected is not None and expected != i:
                        self.wrong_gpu.add((p.pid, i, expected))
                    gib = (p.usedGpuMemory or 0) / 2**30
                    self.pid_max_gib[p.pid] = max(self.pid_max_gib.get(p.pid, 0.0), gib)
                    self.pid_gpus.setdefault(p.pid, set()).add(i)
                    self.pid_gpu_max_gib[(p.pid, i)] = max(self.pid_gpu_max_gib.get((p.pid, i), 0.0), gib)
                used = int(pynvml.nvmlDeviceGetMemoryInfo(h).used) / 2**30  # the card's own count (an MPS server
                self.gpu_total_max_gib[i] = max(self.gpu_total_max_gib.get(i, 0.0), used)  # would double a sum)
                self.util.setdefault(i, []).append(int(pynvml.nvmlDeviceGetUtilizationRates(h).gpu))

    def summary(self) -> dict[str, Any]:
        return {
            "nvml": self.available,
            "max_gib_per_process": round(max(self.pid_max_gib.values(), default=0.0), 3),
            "max_used_gib_by_gpu": {i: round(v, 3) for i, v in sorted(self.gpu_total_max_gib.items())},
            "pids_by_gpu": {i: sorted(p for p, g in self.pid_gpus.items() if i in g) for i in sorted(self.util)},
            "pids_on_several_gpus": sorted(p for p, g in self.pid_gpus.items() if len(g) > 1),
            "several_gpus_max_gib": {  # {pid: {gpu: max GiB NVML gave it there}} for those pids
                p: {i: round(self.pid_gpu_max_gib[(p, i)], 3) for i in sorted(g)}
                for p, g in sorted(self.pid_gpus.items())
                if len(g) > 1
            },
            "pids_outside_the_launch": sorted(self.other_pids),
            "mps_server_pids": sorted(self.mps_server_pids),
            "pids_on_another_gpu_than_their_worker": sorted(self.wrong_gpu),
            "mean_util_by_gpu": {i: round(sum(u) / len(u), 1) for i, u in sorted(self.util.items()) if u},
        }


def _is_mps_server(pid: int) -> bool:
    """Whether `pid` is NVIDIA's MPS server (listed by NVML on each GPU whose clients it serves)."""
    import psutil

    try:
        return psutil.Process(pid).name().startswith("nvidia-cuda-mps")
    except psutil.Error:  # gone, or not ours to read: not recognisable as the server
        return False


def _tree(pid: int | None) -> set[int]:
    """`pid` and all its descendants (empty before the launch starts)."""
    import psutil

    if pid is None:
        return set()
    try:
        root = psutil.Process(pid)
        return {pid, *(c.pid for c in root.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def _worker_gpu(pid: int) -> int | None:
    """The `--gpu N` of the `tuner worker` process that is `pid` or its nearest ancestor (None: not found)."""
    import psutil

    try:
        proc: Any = psutil.Process(pid)
        for _ in range(3):
            if proc is None:
                return None
            cmd = proc.cmdline()
            if "worker" in cmd and "--gpu" in cmd:
                return int(cmd[cmd.index("--gpu") + 1])
            proc = proc.parent()
    except (psutil.Error, ValueError, IndexError):
        return None
    return None


def _worker_with_running_trial(storage: str, workers: list[int]) -> tuple[int, int] | None:
    """(pid, trial number) of one of `workers` that runs a trial now (its `worker` attr is host:pid[:gpuN])."""
    import optuna

    from tuner.trial.launch_view import trial_pid

    if not workers:
        return None
    try:
        names = optuna.get_all_study_names(storage)
        if not names:
            return None
        study = optuna.load_study(study_name=names[0], storage=storage)
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    except Exception:  # noqa: BLE001 - the file is busy or not made yet: try again next time
        return None
    for t in running:
        pid = trial_pid(t)
        if pid in workers:
            return pid, t.number
    return None


_LAST_PIDS: set[int] = set()  # the processes the last window's sampler saw on a GPU


def wait_gpus_idle(timeout_s: float = 30.0) -> float:
    """Wait until none of the last window's processes holds a GPU any more (trial children exiting), at most
    `timeout_s`; seconds waited. Returns at once without NVML or a last window."""
    t0 = time.monotonic()
    if not _LAST_PIDS:
        return 0.0
    try:
        import pynvml

        from tuner.vram.nvml import compute_processes

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no NVML: nothing to wait for
        return 0.0
    try:
        while time.monotonic() - t0 < timeout_s:
            n = pynvml.nvmlDeviceGetCount()
            listed = {p.pid for i in range(n) for p in compute_processes(pynvml.nvmlDeviceGetHandleByIndex(i))}
            if not listed & _LAST_PIDS:
                break
            time.sleep(0.5)
    finally:
        pynvml.nvmlShutdown()
    return time.monotonic() - t0


def _launch_children(pid: int) -> list[int]:
    """The launch's worker processes (its direct children)."""
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=False)]
    except psutil.NoSuchProcess:
        return []


def run_window(
    study_file: Path,
    workdir: Path,
    cache_dir: Path,
    launch_args: list[str],
    window_s: float,
    *,
    kill_worker_at_s: float | None = None,
    heartbeat: tuple[int, int] = (5, 20),
) -> dict[str, Any]:
    """`tuner launch STUDY <launch_args>` on a fresh SQLite file in `workdir` for `window_s`, then SIGTERM.
    kill_worker_at_s: SIGKILL one worker process this long after the start, once one of them runs a trial (launch
    must restart it, and the trial must be failed by the heartbeat and retried)."""
    workdir.mkdir(parents=True, exist_ok=True)
    idle_wait_s = wait_gpus_idle()  # the packed plan reads free memory: the last window's children must be gone
    storage = f"sqlite:///{workdir / 'study.db'}"
    env = {
        **os.environ,
        "TUNER_STORAGE": storage,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    cmd = [
        sys.executable,
        "-c",
        ENTRY,
        "launch",
        str(study_file),
        *launch_args,
        "--cache-dir",
        str(cache_dir),
        "--heartbeat-s",
        str(heartbeat[0]),
        "--grace-s",
        str(heartbeat[1]),
    ]
    start = datetime.datetime.now()
    t0 = time.monotonic()
    killed: int | None = None
    killed_trial: int | None = None
    log = workdir / "launch.log"
    with log.open("w") as out, NvmlSampler() as nvml:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        nvml.root_pid = proc.pid
        while proc.poll() is None and time.monotonic() - t0 < window_s:
            time.sleep(0.5)
            if kill_worker_at_s is not None and killed is None and time.monotonic() - t0 >= kill_worker_at_s:
                victim = _worker_with_running_trial(storage, _launch_children(proc.pid))
                if victim is not None:
                    killed, killed_trial = victim
                    os.kill(killed, signal.SIGKILL)
        end = datetime.datetime.now()
        ended_early = proc.poll() is not None
        t_stop = time.monotonic()
        if not ended_early:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        stop_s = time.monotonic() - t_stop
    _LAST_PIDS.clear()
    _LAST_PIDS.update(nvml.pid_max_gib)
    text = log.read_text(errors="replace")
    return {
        "storage": storage,
        "start": start,
        "end": end,
        "window_s": (end - start).total_seconds(),
        "exit_code": proc.returncode,
        "ended_before_window": ended_early,
        "stop_s": round(stop_s, 1),
        "idle_wait_s": round(idle_wait_s, 1),
        "killed_worker_pid": killed,
        "killed_trial": killed_trial,
        "restarted": bool(re.search(r"restart \d+/\d+", text)),
        "mps_line": next(
            (ln for ln in text.splitlines() if ln.startswith("launch: MPS") or ln.startswith("launch: time-slicing")),
            None,
        ),
        "workers": _int_after(r"launch: (\d+) worker\(s\)", text),
        "plan_lines": [ln for ln in text.splitlines() if ln.startswith("launch: GPU ")],
        "nvml": nvml.summary(),
        "log_tail": text[-2500:],
    }


def _int_after(pattern: str, text: str) -> int | None:
    m = re.search(pattern, text)
    return int(m.group(1)) if m else None


def window_trials(run: dict[str, Any], study_name: str) -> dict[str, Any]:
    """The window's trials: trained ones completed inside it, per hour; states; the trials' NVML peaks; busy
    fractions; trials lost (a failed trial without a retry, or one left RUNNING)."""
    import optuna

    from tuner.trial.launch_view import is_trained

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=study_name, storage=run["storage"]).get_trials(deepcopy=False)
    start, end = run["start"], run["end"]
    inside = [t for t in trials if t.datetime_complete is not None and start <= t.datetime_complete <= end]
    trained = [t for t in inside if is_trained(t)]
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    lost = [
        t.number
        for t in trials
        if t.state.name == "FAIL" and t.user_attrs.get("end_reason") == "worker_lost" and t.number not in retried
    ]
    by_reason: dict[str, int] = {}
    for t in trials:
        key = t.state.name.lower() + ("/" + str(t.user_attrs.get("end_reason")) if t.state.is_finished() else "")
        by_reason[key] = by_reason.get(key, 0) + 1
    peaks = [float(t.user_attrs["nvml_peak_gib"]) for t in trials if t.user_attrs.get("nvml_peak_gib") is not None]
    busy = sorted(float(t.user_attrs["gpu_busy_frac"]) for t in trained if t.user_attrs.get("gpu_busy_frac"))
    hours = run["window_s"] / 3600.0
    killed = run.get("killed_trial")
    killed_fate = None
    if killed is not None:
        first = next((t for t in trials if t.number == killed), None)
        retry = next((t for t in trials if t.system_attrs.get("failed_trial") == killed), None)
        killed_fate = {
            "state": first.state.name if first else None,
            "end_reason": first.user_attrs.get("end_reason") if first else None,
            "retry": None if retry is None else {"number": retry.number, "state": retry.state.name},
        }
    return {
        "killed_trial_fate": killed_fate,
        "trained_in_window": len(trained),
        "trials_per_hour": len(trained) / hours if hours > 0 else 0.0,
        "trials_by_state": by_reason,
        "running_left": sum(t.state.name == "RUNNING" for t in trials),
        "lost_trials": lost,
        "max_trial_nvml_peak_gib": max(peaks, default=None),
        "median_gpu_busy_frac": busy[len(busy) // 2] if busy else None,
        # where a trained trial's time goes: its whole duration in the worker, the child's run (trial_wall_s: from
        # the request to the outcome), the trainer's share of it (gpu_busy_frac x duration)
        "median_trial_s": _median([(t.datetime_complete - t.datetime_start).total_seconds() for t in trained]),
        "median_child_run_s": _median([float(t.user_attrs.get("trial_wall_s") or 0.0) for t in trained]),
        "median_busy_s": _median(
            [
                float(t.user_attrs.get("gpu_busy_frac") or 0.0)
                * (t.datetime_complete - t.datetime_start).total_seconds()
                for t in trained
            ]
        ),
        "trained_nvml_pid_unseen": sum(
            1
            for t in trained
            if t.user_attrs.get("peak_vram_kind") != "cpu_tensor_bytes" and not t.user_attrs.get("nvml_pid_seen")
        ),
        "workers_seen": len({t.user_attrs.get("worker") for t in trials if t.user_attrs.get("worker")}),
    }


def _median(xs: list[float]) -> float | None:
    return round(sorted(xs)[len(xs) // 2], 3) if xs else None
