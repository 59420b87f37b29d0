"""Predict a training trial's peak GPU memory, as NVML sees the process, from its Phase1Config alone: tensor bytes
(the step's timeline, tensors.py) + the caching allocator's growth (allocator.py) + the memory outside the
allocator (the device calibration the caller passes in). Pure arithmetic, no torch, no file, no NVML. The derivation
of each part: docs/vram-estimate.md. All results in GiB (2^30 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from tuner.units import GIB
from tuner.vram.calibration import DeviceCalibration, describe_calibration
from tuner.vram.estimate.allocator import PAGE, allocator_gib, block_round, recompute_hole_bytes, replay_kappa
from tuner.vram.estimate.tensors import tensor_timeline

# --- result ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A prediction of one trial's peak memory. All `*_gib` in GiB; `components` maps name -> GiB at the peak."""

    total_gib: float  # tensor + allocator + outside: the predicted NVML per-process peak
    tensor_gib: float  # predicted torch.cuda.max_memory_allocated (raw x calibration tensor_scale)
    allocator_gib: float  # predicted peak reserved - peak allocated
    outside_gib: float  # memory outside the caching allocator (calibrated per device/driver/torch)
    components: dict[str, float]  # tensor bytes per component live at the peak moment
    tensor_raw_gib: float  # the analytic tensor peak before the calibration's correction
    tensor_scale: float  # calibration's multiplicative tensor correction (1.0 uncalibrated)
    peak_moment: str  # where in the step the peak happens
    moments: dict[str, float]  # raw tensor GiB at each candidate moment
    calibrated: bool  # True when the outside part comes from a calibration of this device
    outside_source: str  # where the outside part comes from, in words
    calibration_key: str | None
    device: str  # "cuda" | "cpu"
    batch_size: int
    n_seq: int
    params: int
    notes: tuple[str, ...] = ()
    transient_gib: float = 0.0  # part of the tensor peak that is step-transient (activations, temporaries)
    ce_chunk_gib: float = 0.0  # F: one cross-entropy chunk's fp32 [rows, V] tensor
    ce_backward_gib: float = 0.0  # tensor bytes (scaled like tensor_gib) when the CE backward's hole is open
    ce_hole_kappa: float = 0.0  # segment growth past the live bytes at the CE backward, in units of F
    ce_replay_kappa: float = 0.0  # the best-fit replay's kappa for this config (ce_hole_kappa = it + device offset)
    kappa_source: str = ""  # "replay" or "replay + device offset of N trials"
    allocator_class: str = ""  # "amp" | "fp32": the dtype class whose kappa applies (calibration keys on it)
    recompute_gib: float = 0.0  # tensor bytes (scaled like tensor_gib) at the worst moment from the first
    # recomputed block's backward on (0 when nothing is recomputed)
    recompute_hole_gib: float = 0.0  # the segment growth past the live bytes there (allocator.recompute_hole_bytes)
    config: dict[str, Any] = field(default_factory=dict, repr=False)

    def allocator_for(self, tensor_peak_gib: float, kappa: float | None = None) -> float:
        """Allocator overhead (GiB) this model predicts when the tensor peak reached is `tensor_peak_gib` (the CE
        backward moment is scaled by the same ratio); `kappa` overrides the estimate's own."""
        k = self.ce_hole_kappa if kappa is None else kappa
        scale = tensor_peak_gib / self.tensor_gib if self.tensor_gib > 0 else 1.0
        return allocator_gib(
            tensor_peak_gib,
            self.ce_backward_gib * scale,
            self.ce_chunk_gib,
            k,
            self.recompute_gib * scale,
            self.recompute_hole_gib,
        )

    def observed_kappa(self, torch_peak_gib: float, allocator_gap_gib: float) -> float | None:
        """Invert the allocator model: the kappa that explains a measured gap (reserved - allocated peak, GiB).

        None when the gap is page rounding only and the CE backward stayed below the peak, or when the recomputed
        blocks' hole reaches the measured high-water mark: the CE hole did not set it, so the trial bounds kappa
        from above without measuring it."""
        if self.ce_chunk_gib <= 0:
            return None
        scale = torch_peak_gib / self.tensor_gib if self.tensor_gib > 0 else 1.0
        ce_bwd = self.ce_backward_gib * scale
        pages = allocator_gib(torch_peak_gib, 0.0, 0.0, 0.0)
        excess = allocator_gap_gib - pages
        if excess <= 2 * PAGE / GIB and ce_bwd < torch_peak_gib:
            return None
        if self.recompute_hole_gib > 0 and (
            self.recompute_gib * scale + self.recompute_hole_gib >= torch_peak_gib + excess - 2 * PAGE / GIB
        ):
            return None
        return max(0.0, (excess + torch_peak_gib - ce_bwd) / self.ce_chunk_gib)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_gib": self.total_gib,
            "tensor_gib": self.tensor_gib,
            "allocator_gib": self.allocator_gib,
            "outside_gib": self.outside_gib,
            "components": dict(self.components),
            "tensor_raw_gib": self.tensor_raw_gib,
            "tensor_scale": self.tensor_scale,
            "peak_moment": self.peak_moment,
            "moments": dict(self.moments),
            "calibrated": self.calibrated,
            "outside_source": self.outside_source,
            "calibration_key": self.calibration_key,
            "device": self.device,
            "batch_size": self.batch_size,
            "n_seq": self.n_seq,
            "params": self.params,
            "notes": list(self.notes),
            "transient_gib": self.transient_gib,
            "ce_chunk_gib": self.ce_chunk_gib,
            "ce_backward_gib": self.ce_backward_gib,
            "ce_hole_kappa": self.ce_hole_kappa,
            "ce_replay_kappa": self.ce_replay_kappa,
            "kappa_source": self.kappa_source,
            "allocator_class": self.allocator_class,
            "recompute_gib": self.recompute_gib,
            "recompute_hole_gib": self.recompute_hole_gib,
        }


# --- public API ---------------------------------------------------------------------------------------------------


def estimate(
    config: Any,
    calibration: DeviceCalibration | None = None,
    *,
    batch_size: int | None = None,
    device: str = "cuda",
    calibrated: bool | None = None,
    calibration_source: str | None = None,
) -> Estimate:
    """Predict the peak memory of one training trial of `config` (a model.config.Phase1Config). Pure: reads no
    file and starts no NVML; the caller chooses the calibration (tuner.vram.calibration.choose_calibration).

    calibration: the DeviceCalibration of the GPU the trial runs on, or None (the outside part is then 0 and the
    estimate says it is NOT calibrated). calibrated / calibration_source: what the caller knows about that choice
    (default: a given calibration is this GPU's, described by its key). batch_size: overrides config.batch_size.
    device "cpu": the CPU tensor-bytes peak only.
    """
    if device not in ("cuda", "cpu"):
        raise ValueError(f"estimate: device={device!r} must be 'cuda' or 'cpu'")
    cfg = config.replace(batch_size=batch_size) if batch_size is not None else config
    tl, sizes = tensor_timeline(cfg, device)
    raw_gib = tl.peak / GIB
    components = {k: v / GIB for k, v in sorted(tl.peak_parts.items()) if v}
    persistent = {"parameters", "optimizer_state", "gradients", "batch", "previous_step_output"}
    transient_gib = sum(v for k, v in components.items() if k not in persistent)
    notes: list[str] = []
    if cfg.lns_enabled:
        notes.append("lns_enabled: LNS models are inference-only; this is the training estimate of the same shape")
    amp = cfg.dtype != "float32"
    chunked = 0 < cfg.loss_chunk_size < cfg.n_seq
    rows = cfg.batch_size * (cfg.loss_chunk_size if chunked else cfg.n_seq)
    ce_chunk = block_round(4 * rows * cfg.vocab_size) / GIB
    ce_bwd_raw = tl.moments.get("backward: loss", 0) / GIB
    # from the first recomputed block's backward to the end of the step (the recompute hole stays in the segment)
    names = list(tl.moments)
    first = next((i for i, k in enumerate(names) if k.startswith("backward: block")), len(names))
    hole = recompute_hole_bytes(cfg) / GIB
    recompute_raw = max((tl.moments[k] for k in names[first:]), default=0) / GIB if hole else 0.0
    cls = "amp" if amp else "fp32"
    # The CPU estimate is the tensor bytes alone; the CUDA one replaces the parts the allocator and the device add.
    cpu = Estimate(
        total_gib=raw_gib,
        tensor_gib=raw_gib,
        allocator_gib=0.0,
        outside_gib=0.0,
        components=components,
        tensor_raw_gib=raw_gib,
        tensor_scale=1.0,
        peak_moment=tl.peak_moment,
        moments={k: v / GIB for k, v in tl.moments.items()},
        calibrated=True,
        outside_source="cpu: tensor bytes only (no allocator cache, no device context)",
        calibration_key=None,
        device=device,
        batch_size=cfg.batch_size,
        n_seq=cfg.n_seq,
        params=sizes["n_params"],
        notes=tuple(notes),
        transient_gib=transient_gib,
        ce_chunk_gib=ce_chunk,
        ce_backward_gib=ce_bwd_raw,
        allocator_class=cls,
        recompute_gib=recompute_raw,
        config=cfg.to_dict(),
    )
    if device == "cpu":
        return cpu
    cal = calibration
    if calibrated is None:
        calibrated = cal is not None
    source = calibration_source if calibration_source is not None else describe_calibration(cal)
    scale = cal.tensor_scale if cal is not None else 1.0
    workspace = cal.workspace_gib if cal is not None else 0.0
    tensor = raw_gib * scale + workspace
    if cal is not None and workspace:
        components["library_workspace"] = workspace
    replay = replay_kappa(cfg, rows, chunked)
    offset = cal.kappa_offset(cls) if cal is not None else None
    if cal is not None and offset is not None:
        kappa = max(0.0, replay + offset)
        n = len(cal.kappa_samples(cls))
        kappa_source = f"replay {offset:+.3f} (median offset of {n} {cls} samples: calibration probes and trials)"
    else:
        kappa, kappa_source = replay, "replay"
    ce_bwd = ce_bwd_raw * scale + workspace
    recompute = recompute_raw * scale + workspace if hole else 0.0
    alloc = allocator_gib(tensor, ce_bwd, ce_chunk, kappa, recompute, hole)
    outside = cal.outside_effective_gib if cal is not None else 0.0
    return replace(
        cpu,
        total_gib=tensor + alloc + outside,
        tensor_gib=tensor,
        allocator_gib=alloc,
        outside_gib=outside,
        tensor_scale=scale,
        calibrated=calibrated,
        outside_source=source,
        calibration_key=cal.key if cal is not None else None,
        ce_backward_gib=ce_bwd,
        ce_hole_kappa=kappa,
        ce_replay_kappa=replay,
        kappa_source=kappa_source,
        recompute_gib=recompute,
        recompute_hole_gib=hole,
    )
