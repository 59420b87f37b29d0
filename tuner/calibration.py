"""Per-device calibration of the VRAM estimator: the memory outside PyTorch's allocator, and a tensor correction.

What the estimator cannot derive from a config is stored here, keyed by (device name, driver, torch version):

- `outside_gib`: memory NVML charges to the process that the caching allocator never sees (CUDA context, loaded
  kernel modules, library handles), measured by `calibrate_device()` after real training kernels ran;
- `workspace_gib`: library workspaces that *are* allocated through the caching allocator (cuBLAS/cuBLASLt, one per
  thread that runs matmuls: the forward thread and autograd's backward thread), so they count in
  `torch.cuda.max_memory_allocated` but not in any tensor of the model;
- a robust running correction learned by `refine()` from finished trials, each a median over the last `WINDOW`:
  the ratio measured/predicted tensor peak (`tensor_scale`); per dtype class ("amp" | "fp32") the offset of the
  allocator's CE-hole coefficient kappa over the replay's (tuner.estimate: reserved peak = max(tensor peak, tensor
  at the CE backward + kappa F)), kappa inverted from each trial's allocator gap (reserved - allocated peak); and,
  when the trial's reserved peak is known, the outside part NVML - reserved (`outside_effective_gib`).

Files are JSON; writes are atomic and serialised by an advisory lock, so several workers may refine one file.
The default file is `~/.cache/phase1-tuner/calibration.json`. Nothing here is hard-coded per device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tuner.errors import TunerError

GIB = float(2**30)
WINDOW = 50  # finished trials kept per device for the running medians
MIN_REFINE_SAMPLES = 3  # below this many trials the calibrate_device() figures are used as they are
MIN_KAPPA_SAMPLES = 2  # each trial measures the offset directly; two, so one odd trial cannot set it alone
ALLOCATOR_CLASSES = ("amp", "fp32")
FILE_VERSION = 1


class CalibrationError(TunerError):
    """A calibration file that cannot be read or written, or a device that cannot be calibrated."""


def default_path() -> Path:
    """`~/.cache/phase1-tuner/calibration.json` (XDG_CACHE_HOME respected, as every cache on Linux does)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "phase1-tuner" / "calibration.json"


def device_key(device: str, driver: str, torch_version: str) -> str:
    return f"{device}|{driver}|{torch_version}"


@dataclass(frozen=True)
class DeviceCalibration:
    """The calibration of one (device, driver, torch). GiB = 2^30 bytes."""

    device: str
    driver: str
    torch: str
    context_gib: float  # bare CUDA context (NVML, process after cuInit + one tiny allocation)
    outside_gib: float  # NVML - torch reserved after a real training step ran (context + kernels + handles)
    workspace_gib: float  # allocator-visible library workspaces (cuBLAS), beyond the model's tensors
    cuda: str = ""
    source: str = "calibrate_device"
    measured_at: str = ""
    # Running corrections from finished trials (refine()); empty until trials finish on this device.
    tensor_ratios: tuple[float, ...] = ()  # measured torch peak / predicted raw tensor peak
    outside_residuals_gib: tuple[float, ...] = ()  # nvml - torch reserved peak
    kappa_offsets_amp: tuple[float, ...] = ()  # observed - replayed CE-hole kappa of autocast (bf16/fp16) trials
    kappa_offsets_fp32: tuple[float, ...] = ()  # observed - replayed CE-hole kappa of float32 trials
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return device_key(self.device, self.driver, self.torch)

    @property
    def n_refined(self) -> int:
        return len(self.tensor_ratios)

    @property
    def tensor_scale(self) -> float:
        """Multiplicative correction of the predicted tensor bytes (1.0 until MIN_REFINE_SAMPLES trials)."""
        if len(self.tensor_ratios) < MIN_REFINE_SAMPLES:
            return 1.0
        return statistics.median(self.tensor_ratios)

    @property
    def outside_effective_gib(self) -> float:
        """Outside part used by estimate(): the trials' median residual once there are enough, else calibrated."""
        if len(self.outside_residuals_gib) < MIN_REFINE_SAMPLES:
            return self.outside_gib
        return statistics.median(self.outside_residuals_gib)

    def kappa_samples(self, cls: str) -> tuple[float, ...]:
        if cls not in ALLOCATOR_CLASSES:
            raise CalibrationError(f"allocator class {cls!r} is not one of {ALLOCATOR_CLASSES}")
        return self.kappa_offsets_amp if cls == "amp" else self.kappa_offsets_fp32

    def kappa_offset(self, cls: str) -> float | None:
        """This device's offset of the CE-hole kappa over the best-fit replay's, for dtype class `cls` (median of
        its trials); None before MIN_KAPPA_SAMPLES trials (tuner.estimate then uses the replay's kappa as it is)."""
        k = self.kappa_samples(cls)
        return statistics.median(k) if len(k) >= MIN_KAPPA_SAMPLES else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in _TUPLE_FIELDS:
            d[k] = list(getattr(self, k))
        d["key"] = self.key
        d["tensor_scale"] = self.tensor_scale
        d["outside_effective_gib"] = self.outside_effective_gib
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DeviceCalibration":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in _TUPLE_FIELDS:
            kw[k] = tuple(float(x) for x in kw.get(k, ()))
        try:
            return cls(**kw)
        except TypeError as exc:
            raise CalibrationError(f"calibration entry {d.get('key', '?')}: {exc}; re-run `tuner estimate "
                                   "--calibrate` on that GPU") from None


_TUPLE_FIELDS = ("tensor_ratios", "outside_residuals_gib", "kappa_offsets_amp", "kappa_offsets_fp32")


# --- refine from finished trials ---------------------------------------------------------------------


def refine(calibration: DeviceCalibration, predicted: Any, measured_nvml_gib: float,
           measured_torch_peak_gib: float, measured_reserved_gib: float | None = None) -> DeviceCalibration:
    """Return `calibration` updated with one finished trial on its device.

    predicted: the `tuner.estimate.Estimate` made for the trial (its raw tensor part and its CE-backward figures are
    used, so corrections never compound). measured_nvml_gib: the NVML per-process peak; measured_torch_peak_gib:
    `torch.cuda.max_memory_allocated`; measured_reserved_gib: `torch.cuda.max_memory_reserved` when the worker has
    it. The allocator gap (reserved - allocated peak) is inverted into the trial's kappa; its offset over the kappa
    the estimate used from the replay (predicted.ce_replay_kappa) is kept per dtype class.
    With the reserved peak the gap is measured and NVML - reserved refines the outside part; without it the gap is
    NVML - calibrated outside - allocated peak and the outside part stays the calibrate_device() figure (the two
    cannot be told apart then). Non-positive or non-finite measurements are rejected (a trial that never reached
    the GPU says nothing about it).
    """
    named = [("measured_nvml_gib", measured_nvml_gib), ("measured_torch_peak_gib", measured_torch_peak_gib)]
    if measured_reserved_gib is not None:
        named.append(("measured_reserved_gib", measured_reserved_gib))
    for name, v in named:
        if not (isinstance(v, (int, float)) and v == v and 0 < v < float("inf")):
            raise CalibrationError(f"refine: {name}={v!r} is not a positive measurement; pass the trial's peaks")
    raw = float(predicted.tensor_raw_gib)
    if raw <= 0:
        raise CalibrationError("refine: the prediction has no tensor part; pass the Estimate made for the trial")
    cls = getattr(predicted, "allocator_class", "")
    if cls not in ALLOCATOR_CLASSES:
        raise CalibrationError("refine: the prediction has no allocator class; pass the Estimate made for the trial "
                               "by tuner.estimate.estimate(..., device='cuda')")
    # the library workspaces are added to the tensor part separately (not scaled), so take them out of the ratio
    ratio = (measured_torch_peak_gib - calibration.workspace_gib) / raw
    if measured_reserved_gib is not None:
        gap = measured_reserved_gib - measured_torch_peak_gib
        outside = calibration.outside_residuals_gib + (measured_nvml_gib - measured_reserved_gib,)
    else:
        gap = measured_nvml_gib - calibration.outside_gib - measured_torch_peak_gib
        outside = calibration.outside_residuals_gib
    kappa = predicted.observed_kappa(measured_torch_peak_gib, gap)  # None: the CE hole did not set the peak
    upd: dict[str, Any] = {
        "tensor_ratios": (calibration.tensor_ratios + (ratio,))[-WINDOW:],
        "outside_residuals_gib": outside[-WINDOW:],
    }
    if kappa is not None:
        offset = kappa - predicted.ce_replay_kappa
        upd[f"kappa_offsets_{cls}"] = (calibration.kappa_samples(cls) + (offset,))[-WINDOW:]
    return dataclasses.replace(calibration, **upd)


# --- files -----------------------------------------------------------------------------------------------


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"version": FILE_VERSION, "entries": {}, "last_key": None}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: unreadable calibration file ({exc}); delete it and re-run "
                               "`tuner estimate --calibrate` on the GPU") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise CalibrationError(f"{path}: not a calibration file (no 'entries'); delete it and re-calibrate")
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)  # atomic: a reader sees the old or the new file, never half of one


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def save_calibration(cal: DeviceCalibration, path: str | os.PathLike | None = None) -> Path:
    """Store `cal` under its key (replacing that key's entry) and mark it the file's most recent entry."""
    p = Path(path) if path is not None else default_path()
    with _locked(p):
        data = _read(p)
        data["entries"][cal.key] = cal.to_dict()
        data["last_key"] = cal.key
        data["version"] = FILE_VERSION
        _write(p, data)
    return p


def load_calibration(path: str | os.PathLike | None = None, key: str | None = None) -> DeviceCalibration | None:
    """The entry for `key` (None: the file's most recent entry); None when the file or the entry is absent."""
    p = Path(path) if path is not None else default_path()
    data = _read(p)
    k = key if key is not None else data.get("last_key")
    entry = data["entries"].get(k) if k else None
    return DeviceCalibration.from_dict(entry) if entry else None


def load_all(path: str | os.PathLike | None = None) -> dict[str, DeviceCalibration]:
    p = Path(path) if path is not None else default_path()
    return {k: DeviceCalibration.from_dict(v) for k, v in _read(p)["entries"].items()}


def update_calibration(path: str | os.PathLike | None, key: str,
                       fn: Callable[[DeviceCalibration], DeviceCalibration]) -> DeviceCalibration:
    """Read-modify-write one entry under the file lock (several workers refine one file safely)."""
    p = Path(path) if path is not None else default_path()
    with _locked(p):
        data = _read(p)
        entry = data["entries"].get(key)
        if entry is None:
            raise CalibrationError(f"{p}: no calibration for {key}; run `tuner estimate --calibrate` on that GPU")
        new = fn(DeviceCalibration.from_dict(entry))
        data["entries"][key] = new.to_dict()
        _write(p, data)
    return new


def refine_stored(path: str | os.PathLike | None, key: str, predicted: Any, measured_nvml_gib: float,
                  measured_torch_peak_gib: float, measured_reserved_gib: float | None = None) -> DeviceCalibration:
    """`refine()` applied to the stored entry `key`, atomically. What the worker calls after each finished trial."""
    return update_calibration(path, key, lambda c: refine(c, predicted, measured_nvml_gib, measured_torch_peak_gib,
                                                          measured_reserved_gib))


# --- which machine is this -------------------------------------------------------------------------------


def current_device_key(index: int = 0) -> str | None:
    """(device name, driver, torch version) of GPU `index` via NVML, without importing torch; None without a GPU."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver / no GPU: this machine has nothing to calibrate
        return None
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(h)
        driver = pynvml.nvmlSystemGetDriverVersion()
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    name = name.decode() if isinstance(name, bytes) else str(name)
    driver = driver.decode() if isinstance(driver, bytes) else str(driver)
    try:
        tv = version("torch")
    except PackageNotFoundError:
        tv = "none"
    return device_key(name, driver, tv)


# --- measuring a device ------------------------------------------------------------------------------------


def nvml_process_used_bytes(pid: int | None = None, index: int = 0) -> tuple[int | None, str]:
    """NVML memory of process `pid` on GPU `index`: (bytes, how). Falls back to the only process listed (containers
    may show host PIDs); returns (None, reason) when it cannot tell. Caller must have called nvmlInit()."""
    import pynvml

    pid = os.getpid() if pid is None else pid
    h = pynvml.nvmlDeviceGetHandleByIndex(index)
    procs = list(pynvml.nvmlDeviceGetComputeRunningProcesses(h))
    for p in procs:
        if p.pid == pid and p.usedGpuMemory is not None:
            return int(p.usedGpuMemory), "nvml_process"
    if len(procs) == 1 and procs[0].usedGpuMemory is not None:
        return int(procs[0].usedGpuMemory), "nvml_only_process"
    return None, f"pid {pid} not among {len(procs)} NVML processes"


def calibrate_device(index: int = 0, *, config: Any = None) -> DeviceCalibration:
    """Measure this GPU in the current process; call it in a FRESH process (nothing on the GPU yet).

    1. bare context: NVML process memory after CUDA init and one tiny allocation, minus torch reserved;
    2. workspace: allocator bytes added by one matmul in this thread and one in autograd's backward thread
       (cuBLAS workspaces live in the caching allocator, one per (thread handle, stream));
    3. outside after kernels ran: real training steps of a small Phase 1 model (`config`, default 2 layers,
       d_model 1024, vocab 50257, n_seq 256) in float32 and bfloat16 through model.train, then NVML - reserved;
    4. the allocator gap of those runs and the kappa it implies, stored in `extra` for the record only (its CE
       chunk is too small to measure kappa; trials refine it, see refine()).
    """
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import pynvml
    import torch

    if not torch.cuda.is_available():
        raise CalibrationError("calibrate_device needs a CUDA GPU; run it on the machine whose trials you estimate")
    pynvml.nvmlInit()
    try:
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
        torch.empty(1, device=dev)
        torch.cuda.synchronize()
        used, how = nvml_process_used_bytes(index=index)
        if used is None:
            raise CalibrationError(f"calibrate_device: NVML cannot see this process ({how})")
        context = used - torch.cuda.memory_reserved(dev)

        base = torch.cuda.memory_allocated(dev)
        a = torch.randn(256, 256, device=dev, requires_grad=True)
        b = torch.randn(256, 256, device=dev)
        for dt in (torch.float32, torch.bfloat16):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dt != torch.float32):
                (a @ b).float().sum().backward()
        torch.cuda.synchronize()
        workspace = torch.cuda.memory_allocated(dev) - base - a.numel() * 4 * 2 - b.numel() * 4  # minus a, a.grad, b
        del a, b

        frag = _run_training_steps(config, dev)
        torch.cuda.synchronize()
        used, how = nvml_process_used_bytes(index=index)
        if used is None:
            raise CalibrationError(f"calibrate_device: NVML cannot see this process ({how})")
        outside = used - torch.cuda.memory_reserved(dev)
        driver = pynvml.nvmlSystemGetDriverVersion()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
    finally:
        pynvml.nvmlShutdown()
    from importlib.metadata import version

    return DeviceCalibration(
        device=name.decode() if isinstance(name, bytes) else str(name),
        driver=driver.decode() if isinstance(driver, bytes) else str(driver),
        torch=version("torch"), cuda=str(torch.version.cuda), context_gib=context / GIB, outside_gib=outside / GIB,
        workspace_gib=max(0, workspace) / GIB, source=f"calibrate_device ({how})",
        measured_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), extra=frag,
    )


def _run_training_steps(config: Any, dev: Any) -> dict[str, Any]:
    """A few real optimizer steps of a small model in fp32 and bf16, so the kernels trials use get loaded.

    Also records each run's allocator gap (peak reserved - peak allocated, the cache emptied before each run) and the
    kappa tuner.estimate would infer from it. Returns {"allocator_runs": [...]} for DeviceCalibration.extra."""
    import torch

    from model.config import Phase1Config
    from model.train import train_and_evaluate
    from tuner.estimate import estimate

    base = config or Phase1Config(n_layers=2, n_seq=256, batch_size=2, loss_chunk_size=128,
                                  stability_monitoring_enabled=False)
    data = synthetic_token_data(base.vocab_size, n_tokens=base.n_seq * base.batch_size * 4 + base.n_seq + 2, seed=0)
    runs = []
    for dt in ("float32", "bfloat16"):
        cfg = base.replace(dtype=dt)
        tokens = cfg.n_seq * cfg.batch_size * 2
        torch.cuda.empty_cache()  # reserved starts from what is allocated, so the run's peak reserved is its own
        torch.cuda.reset_peak_memory_stats(dev)
        train_and_evaluate(cfg, data, train_tokens=tokens, eval_tokens=cfg.n_seq, device=str(dev))
        torch.cuda.synchronize(dev)
        alloc, res = torch.cuda.max_memory_allocated(dev) / GIB, torch.cuda.max_memory_reserved(dev) / GIB
        e = estimate(cfg, device="cuda", calibration=_plain())
        runs.append({"dtype": dt, "peak_allocated_gib": alloc, "peak_reserved_gib": res,
                     "ce_chunk_gib": e.ce_chunk_gib, "kappa": e.observed_kappa(alloc, res - alloc)})  # None: no hole
    return {"allocator_runs": runs}


def _plain() -> "DeviceCalibration":
    return DeviceCalibration(device="-", driver="-", torch="-", context_gib=0.0, outside_gib=0.0, workspace_gib=0.0,
                             source="calibrating")


def synthetic_token_data(vocab_size: int, n_tokens: int, seed: int = 0) -> Any:
    """A `model.data.TokenData` of uniformly random token ids (memory measurements need shapes, not text).

    Only `train`, `val` and `vocab_size` matter to training; the provenance fields say "synthetic"."""
    import numpy as np

    from model import data as mdata

    rng = np.random.default_rng(seed)
    dtype = np.uint16 if vocab_size <= 65535 else np.uint32
    train = rng.integers(0, vocab_size, size=n_tokens, dtype=np.int64).astype(dtype)
    val = rng.integers(0, vocab_size, size=n_tokens, dtype=np.int64).astype(dtype)
    return mdata.TokenData(
        train=train, val=val, vocab_size=vocab_size, tokenizer_path="", corpus_hash="synthetic-uniform",
        eot_id=0, n_learned_tokens=vocab_size, n_train_docs=1, n_val_docs=1, n_bytes=0, skipped_files=0,
        cache_path="", from_cache=False, prepare_time_s=0.0,
    )
