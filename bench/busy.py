"""Where a worker's time goes between and inside its trials: gpu_busy_frac and the per-phase seconds of each trial.

    python bench/busy.py --tiny --n-trials 8 --out /tmp/busy_cpu.json          # CPU: the tiny two-layer study
    python bench/busy.py --n-trials 4 --train-tokens 2000000 --out $OUT/busy.json   # GPU: studies/phase1_8gb.yaml

One worker (tuner.trial.worker.run_worker, in this process, its trial child spawned as in production) runs
--n-trials trials of the study on a fresh SQLite file, with the sampler's seed fixed. The data is prepared
(tokenized into the cache) before the worker starts, as it is for any study after its first run. On a GPU, NVML is
sampled every 0.5 s for the standby children's memory (`standby_nvml`: meant to be none). Per trial: its
state and end reason, `gpu_busy_frac`, `phase_s` (tuner.trial.phases) and `idle_before_s`; overall: the median
gpu_busy_frac of the trials that trained, the median seconds of every phase, and the worker's wall time against
the sum of its trained trials' train + eval seconds (busy over the whole run, gaps between trials included).
--train-tokens / --eval-tokens override the study's budget (the JSON says so). `--standby off` runs without the
standby child (the A/B of what it saves after ceiling stops and OOMs). `--tiny` is tests/tuner/tiny.py's
BASE study (TPE, 2 layers of width 64, 1000 training tokens): a CPU figure, not a GPU one.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo's packages (the project is not pip-installed)

from bench._common import RESULTS, device_header, median_or_none, write_json  # noqa: E402


def _spec(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    import yaml

    from tuner.study.loader import spec_from_dict

    if args.tiny:
        from tests.tuner.tiny import BASE

        data = copy.deepcopy(BASE)
        data["name"] = "busy_tiny"
        base_dir = ROOT
    else:
        data = yaml.safe_load(args.study.read_text())
        base_dir = args.study.parent
    data["n_trials"] = args.n_trials
    overrides: dict[str, Any] = {"n_trials": args.n_trials}
    for key, value in (("train_tokens", args.train_tokens), ("eval_tokens", args.eval_tokens)):
        if value is not None:
            data["budget"][key] = value
            overrides[f"budget.{key}"] = value
    data.pop("baseline", None)  # the dense reference trial is another model: it would be one of few trials here
    overrides["baseline"] = "removed"
    return spec_from_dict(data, where="bench/busy", base_dir=base_dir), overrides


class _StandbyWatch:
    """On a GPU: samples NVML every 0.5 s for the memory of this process's standby trial children (named
    `*-standby`; they must hold none), so the JSON shows it measured. `seen` counts samples where NVML listed one;
    `active_listed` those where it listed the training child (proof that NVML sees this machine's PIDs at all)."""

    def __init__(self, gpu: int | None) -> None:
        import threading

        self.gpu, self.max_gib, self.samples, self.seen, self.active_listed = gpu, 0.0, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import multiprocessing

        import pynvml

        from tuner.vram.nvml import process_used_gib

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.gpu or 0)
            while not self._stop.wait(0.5):
                for p in multiprocessing.active_children():
                    if not p.name.startswith("tuner-trial-child") or p.pid is None:
                        continue
                    used = process_used_gib(handle, p.pid)
                    if not p.name.endswith("-standby"):
                        self.active_listed += used is not None  # NVML sees this host's PIDs (else nothing to say)
                        continue
                    self.samples += 1
                    if used is not None:
                        self.seen += 1
                        self.max_gib = max(self.max_gib, used)
        finally:
            pynvml.nvmlShutdown()

    def __enter__(self) -> _StandbyWatch:
        from tuner.vram.nvml import nvml_available

        if nvml_available():
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def result(self) -> dict[str, Any] | None:
        if not self._thread.ident:
            return None  # no NVML: a CPU run
        return {
            "standby_samples": self.samples,
            "standby_listed_by_nvml": self.seen,
            "standby_max_gpu_gib": round(self.max_gib, 4),
            "training_child_listed_samples": self.active_listed,  # 0: NVML cannot see our PIDs, the check says nothing
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", type=Path, default=ROOT / "studies" / "phase1_8gb.yaml")
    ap.add_argument("--tiny", action="store_true", help="tests/tuner/tiny.py's BASE study on CPU")
    ap.add_argument("--n-trials", type=int, default=6)
    ap.add_argument("--train-tokens", type=int, default=None, help="override the study's budget.train_tokens")
    ap.add_argument("--eval-tokens", type=int, default=None, help="override the study's budget.eval_tokens")
    ap.add_argument("--gpu", type=int, default=None, help="physical GPU index for the trial child")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / ".phase1_cache")
    ap.add_argument(
        "--standby",
        choices=("auto", "on", "off"),
        default="auto",
        help="keep a standby trial child (auto: on CUDA only; tuner.trial.runner.TrialRunner)",
    )
    ap.add_argument("--out", type=Path, default=None, help="(default bench/results/busy[_tiny].json)")
    args = ap.parse_args()

    import optuna

    from model.data import prepare_data
    from tuner.storage.connect import open_storage
    from tuner.trial.launch_view import is_trained
    from tuner.trial.worker import run_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec, overrides = _spec(args)
    t_prepare = time.monotonic()
    prepare_data(spec.data, int(spec.model["vocab_size"]), str(args.cache_dir))
    prepare_s = time.monotonic() - t_prepare  # tokenizing on a fresh cache: not part of any trial
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/busy.db"
        storage = open_storage(url)
        t0 = time.monotonic()
        with _StandbyWatch(args.gpu) as watch:
            code = run_worker(
                spec,
                storage=storage,
                seed=0,
                gpu=args.gpu,
                cache_dir=args.cache_dir,
                install_signal_handlers=False,
                standby={"auto": None, "on": True, "off": False}[args.standby],
            )
        worker_s = time.monotonic() - t0
        trials = optuna.load_study(study_name=spec.name, storage=url).get_trials(deepcopy=False)
        rows = [
            {
                "number": t.number,
                "state": t.state.name,
                "end_reason": t.user_attrs.get("end_reason"),
                "gpu_busy_frac": t.user_attrs.get("gpu_busy_frac"),
                "phase_s": t.user_attrs.get("phase_s"),
                "idle_before_s": t.user_attrs.get("idle_before_s"),
                "duration_s": (t.datetime_complete - t.datetime_start).total_seconds()
                if t.datetime_complete and t.datetime_start
                else None,
            }
            for t in trials
        ]
        trained = [t for t in trials if is_trained(t)]
    phases = sorted({k for t in trained for k in (t.user_attrs.get("phase_s") or {})})
    busy_total = sum(float((t.user_attrs.get("phase_s") or {}).get(k, 0.0)) for t in trained for k in ("train", "eval"))
    result = {
        **device_header(),
        "study": "tests/tuner/tiny.py BASE" if args.tiny else str(args.study.relative_to(ROOT)),
        "overrides": overrides,
        "standby": args.standby,
        "prepare_s": round(prepare_s, 3),
        "worker_exit": code,
        # the standby children's GPU memory as NVML listed it (None on CPU): they are meant to hold none
        "standby_nvml": watch.result(),
        "worker_s": round(worker_s, 3),
        "trained": len(trained),
        "median_gpu_busy_frac": median_or_none([float(t.user_attrs.get("gpu_busy_frac") or 0.0) for t in trained]),
        "run_busy_frac": round(busy_total / worker_s, 4) if worker_s > 0 else None,
        "median_phase_s": {
            k: round(median_or_none([float((t.user_attrs.get("phase_s") or {}).get(k, 0.0)) for t in trained]) or 0.0, 3)
            for k in phases
        },
        "median_idle_before_s": median_or_none(
            [float(t.user_attrs["idle_before_s"]) for t in trained if t.user_attrs.get("idle_before_s") is not None]
        ),
        "trials": rows,
    }
    out = args.out or RESULTS / ("busy_tiny.json" if args.tiny else "busy.json")
    write_json(out, result)
    print(
        f"{result['trained']} trained; median gpu_busy_frac {result['median_gpu_busy_frac']}; run busy "
        f"{result['run_busy_frac']}; median phases {result['median_phase_s']}; idle between "
        f"{result['median_idle_before_s']} -> {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
