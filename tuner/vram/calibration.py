"""Per-device calibration of the VRAM estimator: the memory outside PyTorch's allocator, and a tensor correction.

What the estimator cannot derive from a config is stored here, keyed by (device name, driver, torch version):

- `outside_gib`: memory NVML charges to the process that the caching allocator never sees (CUDA context, loaded
  kernel modules, library handles), measured by `calibrate_device()` after real training kernels ran;
- `workspace_gib`: library workspaces that *are* allocated through the caching allocator (cuBLAS/cuBLASLt, one per
  thread that runs matmuls: the forward thread and autograd's backward thread), so they count in
  `torch.cuda.max_memory_allocated` but not in any tensor of the model;
- a robust running correction learned by `refine()` from finished trials, each a median over the last `WINDOW`:
  the ratio measured/predicted tensor peak (`tensor_scale`); per dtype class ("amp" | "fp32") the offset of the
  allocator's CE-hole coefficient kappa over the replay's (tuner.vram.estimate: reserved peak = max(tensor peak, tensor
  at the CE backward + kappa F)), kappa inverted from each trial's allocator gap (reserved - allocated peak); and,
  when the trial's reserved peak is known, the outside part NVML - reserved (`outside_effective_gib`).

Files are JSON; writes are atomic and serialised by an advisory lock, so several workers may refine one file.
The default file is `~/.cache/phase1-tuner/calibration.json`. Nothing here is hard-coded per device.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.errors import TunerError
from tuner.fileio import atomic_write_text, file_lock

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
    # Running corrections from finished trials (refine()); empty until trials finish on this device, except the
    # kappa offsets, which calibrate_device() seeds with its probes.
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
        its samples: calibrate_device()'s probes, then finished trials); None below MIN_KAPPA_SAMPLES samples
        (tuner.vram.estimate then uses the replay's kappa as it is)."""
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
    def from_dict(cls, d: dict[str, Any]) -> DeviceCalibration:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in _TUPLE_FIELDS:
            kw[k] = tuple(float(x) for x in kw.get(k, ()))
        try:
            return cls(**kw)
        except TypeError as exc:
            raise CalibrationError(
                f"calibration entry {d.get('key', '?')}: {exc}; re-run `tuner estimate --calibrate` on that GPU"
            ) from None


_TUPLE_FIELDS = ("tensor_ratios", "outside_residuals_gib", "kappa_offsets_amp", "kappa_offsets_fp32")


# --- refine from finished trials ---------------------------------------------------------------------


def refine(
    calibration: DeviceCalibration,
    predicted: Any,
    measured_nvml_gib: float,
    measured_torch_peak_gib: float,
    measured_reserved_gib: float | None = None,
) -> DeviceCalibration:
    """Return `calibration` updated with one finished trial on its device.

    predicted: the `tuner.vram.estimate.Estimate` made for the trial (its raw tensor part and its CE-backward figures
    are used, so corrections never compound). measured_nvml_gib: the NVML per-process peak; measured_torch_peak_gib:
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
        raise CalibrationError(
            "refine: the prediction has no allocator class; pass the Estimate made for the trial "
            "by tuner.vram.estimate.estimate(..., device='cuda')"
        )
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
        raise CalibrationError(
            f"{path}: unreadable calibration file ({exc}); delete it and re-run `tuner estimate --calibrate` on the GPU"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise CalibrationError(f"{path}: not a calibration file (no 'entries'); delete it and re-calibrate")
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))  # several workers refine one file


def save_calibration(cal: DeviceCalibration, path: str | os.PathLike[str] | None = None) -> Path:
    """Store `cal` under its key (replacing that key's entry) and mark it the file's most recent entry."""
    p = Path(path) if path is not None else default_path()
    with file_lock(p):
        data = _read(p)
        data["entries"][cal.key] = cal.to_dict()
        data["last_key"] = cal.key
        data["version"] = FILE_VERSION
        _write(p, data)
    return p


def load_calibration(path: str | os.PathLike[str] | None = None, key: str | None = None) -> DeviceCalibration | None:
    """The entry for `key` (None: the file's most recent entry); None when the file or the entry is absent."""
    p = Path(path) if path is not None else default_path()
    data = _read(p)
    k = key if key is not None else data.get("last_key")
    entry = data["entries"].get(k) if k else None
    return DeviceCalibration.from_dict(entry) if entry else None


def load_all(path: str | os.PathLike[str] | None = None) -> dict[str, DeviceCalibration]:
    p = Path(path) if path is not None else default_path()
    return {k: DeviceCalibration.from_dict(v) for k, v in _read(p)["entries"].items()}


def update_calibration(
    path: str | os.PathLike[str] | None, key: str, fn: Callable[[DeviceCalibration], DeviceCalibration]
) -> DeviceCalibration:
    """Read-modify-write one entry under the file lock (several workers refine one file safely)."""
    p = Path(path) if path is not None else default_path()
    with file_lock(p):
        data = _read(p)
        entry = data["entries"].get(key)
        if entry is None:
            raise CalibrationError(f"{p}: no calibration for {key}; run `tuner estimate --calibrate` on that GPU")
        new = fn(DeviceCalibration.from_dict(entry))
        data["entries"][key] = new.to_dict()
        _write(p, data)
    return new


def refine_stored(
    path: str | os.PathLike[str] | None,
    key: str,
    predicted: Any,
    measured_nvml_gib: float,
    measured_torch_peak_gib: float,
    measured_reserved_gib: float | None = None,
) -> DeviceCalibration:
    """`refine()` applied to the stored entry `key`, atomically. What the worker calls after each finished trial."""
    return update_calibration(
        path, key, lambda c: refine(c, predicted, measured_nvml_gib, measured_torch_peak_gib, measured_reserved_gib)
    )


# --- which entry an estimate uses -----------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationChoice:
    """The calibration an estimate uses, whether it is this machine's, and where its outside part comes from."""

    calibration: DeviceCalibration | None
    calibrated: bool
    source: str


def describe_calibration(calibration: DeviceCalibration | None) -> str:
    """How an estimate given `calibration` explains its outside part."""
    if calibration is None:
        return "NOT calibrated: outside part unknown (0 used); run `tuner estimate --calibrate` on the trial's GPU"
    n = calibration.n_refined
    return f"calibration {calibration.key}" + (f", refined by {n} trials" if n else "")


def choose_calibration(path: str | os.PathLike[str] | None, here: str | None) -> CalibrationChoice:
    """The entry of the calibration file `path` (None: default_path()) for this machine's device key `here`
    (tuner.vram.nvml.current_device_key(); None without a GPU), else the file's most recent entry (labelled as
    borrowed, calibrated=False), else none."""
    try:
        entries = load_all(path)
        last = load_calibration(path)
    except CalibrationError as exc:
        return CalibrationChoice(None, False, f"outside part unknown (0 used): {exc}")
    if here is not None and here in entries:
        return CalibrationChoice(entries[here], True, f"stored calibration of this machine ({here})")
    if last is not None:
        return CalibrationChoice(
            last,
            False,
            (
                f"NOT calibrated for this machine: outside part borrowed from the stored calibration of {last.key}; "
                "run `tuner estimate --calibrate` on the trial's GPU"
            ),
        )
    return CalibrationChoice(None, False, describe_calibration(None))
