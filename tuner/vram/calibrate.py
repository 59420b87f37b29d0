"""Measuring a GPU for the estimator's calibration (`tuner estimate --calibrate`): runs real training steps in
this process."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from typing import Any

from tuner.units import GIB
from tuner.vram.calibration import CalibrationError, DeviceCalibration
from tuner.vram.nvml import nvml_process_used_bytes


def calibrate_device(index: int = 0, *, config: Any = None) -> DeviceCalibration:
    """Measure this GPU in the current process; call it in a FRESH process (nothing on the GPU yet).

    1. bare context: NVML process memory after CUDA init and one tiny allocation, minus torch reserved;
    2. workspace: allocator bytes added by one matmul in this thread and one in autograd's backward thread
       (cuBLAS workspaces live in the caching allocator, one per (thread handle, stream));
    3. outside after kernels ran: real training steps of a small Phase 1 model (`config`, default 2 layers,
       d_model 1024, vocab 50257, n_seq 256) in float32 and bfloat16 through model.train, then NVML - reserved;
    4. the allocator gap of those runs and the kappa it implies, stored in `extra` for the record only (its CE
       chunk is too small to measure kappa);
    5. kappa probes (kappa_probe_configs): two optimizer steps of trials of the default 12-layer config whose CE
       chunk (0.77, 1.15, 2.30 GiB) sets the peak, in bfloat16 and float32; each probe's observed kappa minus the
       replay's seeds the device's kappa offsets (`kappa_offsets_amp`, `kappa_offsets_fp32`), so a fresh
       calibration already corrects the replay's low bias (about -0.1 F measured on the H100); finished trials
       then join the running median (refine()).
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
                (a @ b).float().sum().backward()  # type: ignore[no-untyped-call]  # torch's backward is unannotated
        torch.cuda.synchronize()
        workspace = torch.cuda.memory_allocated(dev) - base - a.numel() * 4 * 2 - b.numel() * 4  # minus a, a.grad, b
        del a, b

        frag = _run_training_steps(config, dev)
        torch.cuda.synchronize()
        used, how = nvml_process_used_bytes(index=index)
        if used is None:
            raise CalibrationError(f"calibrate_device: NVML cannot see this process ({how})")
        outside = used - torch.cuda.memory_reserved(dev)
        # after the outside part is read, so that figure stays what it measured before the probes existed
        probes = _kappa_probes(dev, max(0, workspace) / GIB)
        driver = pynvml.nvmlSystemGetDriverVersion()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
    finally:
        pynvml.nvmlShutdown()
    from importlib.metadata import version

    return DeviceCalibration(
        device=name.decode() if isinstance(name, bytes) else str(name),
        driver=driver.decode() if isinstance(driver, bytes) else str(driver),
        torch=version("torch"),
        cuda=str(torch.version.cuda),
        context_gib=context / GIB,
        outside_gib=outside / GIB,
        workspace_gib=max(0, workspace) / GIB,
        source=f"calibrate_device ({how})",
        measured_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        kappa_offsets_amp=tuple(p["offset"] for p in probes if p["class"] == "amp" and p["offset"] is not None),
        kappa_offsets_fp32=tuple(p["offset"] for p in probes if p["class"] == "fp32" and p["offset"] is not None),
        extra={**frag, "kappa_probes": probes},
    )


def _run_training_steps(config: Any, dev: Any) -> dict[str, Any]:
    """A few real optimizer steps of a small model in fp32 and bf16, so the kernels trials use get loaded.

    Also records each run's allocator gap (peak reserved - peak allocated, the cache emptied before each run) and the
    kappa tuner.vram.estimate would infer from it. Returns {"allocator_runs": [...]} for DeviceCalibration.extra."""
    import torch

    from model.config import Phase1Config
    from model.train import train_and_evaluate
    from tuner.vram.estimate.predict import estimate

    base = config or Phase1Config(
        n_layers=2, n_seq=256, batch_size=2, loss_chunk_size=128, stability_monitoring_enabled=False
    )
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
        runs.append(
            {
                "dtype": dt,
                "peak_allocated_gib": alloc,
                "peak_reserved_gib": res,
                "ce_chunk_gib": e.ce_chunk_gib,
                "kappa": e.observed_kappa(alloc, res - alloc),
            }
        )  # None: no hole
    return {"allocator_runs": runs}


# (batch_size, n_seq) of the kappa probes, each a trial of the default Phase1Config (12 layers, d_model 1024, vocab
# 50257, checkpointed blocks, loss chunks of 512 positions): CE chunks F of 0.77, 1.15 and 2.30 GiB (4, 4 and 2 loss
# chunks), the range of the validated trials' chunks, at predicted peaks of about 3.9, 5.8 and 9.9 GiB (bf16).
KAPPA_PROBE_SHAPES = ((8, 2048), (12, 2048), (24, 1024))
PROBE_FREE_MARGIN = 1.25  # a probe runs only when the GPU's free memory exceeds its prediction by this factor


def kappa_probe_configs() -> list[Any]:
    """The Phase1Configs whose CE-hole kappa calibrate_device measures: KAPPA_PROBE_SHAPES x (bfloat16, float32).

    Each replays a trial's loss-backward moment rather than a toy's: the depth, width, vocabulary, checkpointing and
    loss chunking of the default config, so the segment under the CE chunk is laid out by a trial's forward (12
    checkpointed blocks) and the peak is at a later chunk's backward, with the earlier chunk's h gradient placed.
    Why: on the H100 the observed - replayed kappa grows with depth (trials' medians: 4 layers +0.03 F, 12 layers
    +0.11 F, 20-24 layers +0.23..+0.35 F), and the former probes (2 and 4 layers) read +0.04..+0.07 F where the
    12-layer trials read +0.11 F (docs/vram-estimate.md)."""
    from model.config import Phase1Config

    return [
        Phase1Config(batch_size=b, n_seq=n, dtype=dt, stability_monitoring_enabled=False)
        for dt in ("bfloat16", "float32")
        for b, n in KAPPA_PROBE_SHAPES
    ]


def _kappa_probes(dev: Any, workspace_gib: float) -> list[dict[str, Any]]:
    """Observed - replayed CE-hole kappa of each kappa_probe_configs() probe, as refine() computes it for a finished
    trial: two optimizer steps (AdamW state present, as in a trial's steady state) from an emptied cache, the estimate
    made with this device's workspace and no offsets. offset None where the CE hole did not set the peak (the probe
    then says nothing about kappa) or the probe did not run: `skipped` says why (a GPU without room for it, an OOM),
    so a small card seeds fewer offsets instead of failing the calibration."""
    import torch

    from model.train import train_and_evaluate
    from tuner.vram.estimate.predict import estimate

    provisional = dataclasses.replace(_plain(), workspace_gib=workspace_gib)
    out = []
    for cfg in kappa_probe_configs():
        e = estimate(cfg, device="cuda", calibration=provisional)
        row: dict[str, Any] = {
            "class": e.allocator_class,
            "batch_size": cfg.batch_size,
            "n_seq": cfg.n_seq,
            "n_layers": cfg.n_layers,
            "loss_chunk_size": cfg.loss_chunk_size,
            "ce_chunk_gib": e.ce_chunk_gib,
            "replay_kappa": e.ce_replay_kappa,
            "predicted_reserved_gib": e.tensor_gib + e.allocator_gib,
            "offset": None,
        }
        out.append(row)
        torch.cuda.empty_cache()  # the probe's peak reserved is its own
        free, need = torch.cuda.mem_get_info(dev)[0] / GIB, row["predicted_reserved_gib"]
        if free < PROBE_FREE_MARGIN * need:
            row["skipped"] = f"{free:.2f} GiB free < {PROBE_FREE_MARGIN} x {need:.2f} GiB predicted"
            continue
        tokens = cfg.batch_size * cfg.n_seq
        data = synthetic_token_data(cfg.vocab_size, n_tokens=3 * tokens + cfg.n_seq + 2, seed=0)
        torch.cuda.reset_peak_memory_stats(dev)
        try:
            train_and_evaluate(cfg, data, train_tokens=2 * tokens, eval_tokens=cfg.n_seq, device=str(dev))
        except torch.cuda.OutOfMemoryError as exc:
            row["skipped"] = f"OutOfMemoryError: {str(exc).splitlines()[0][:160]}"
            torch.cuda.empty_cache()
            continue
        torch.cuda.synchronize(dev)
        alloc, res = torch.cuda.max_memory_allocated(dev) / GIB, torch.cuda.max_memory_reserved(dev) / GIB
        kappa = e.observed_kappa(alloc, res - alloc)
        row.update(
            peak_allocated_gib=alloc,
            peak_reserved_gib=res,
            observed_kappa=kappa,
            offset=None if kappa is None else kappa - e.ce_replay_kappa,
        )
    torch.cuda.empty_cache()
    return out


def _plain() -> DeviceCalibration:
    return DeviceCalibration(
        device="-", driver="-", torch="-", context_gib=0.0, outside_gib=0.0, workspace_gib=0.0, source="calibrating"
    )


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
        train=train,
        val=val,
        vocab_size=vocab_size,
        tokenizer_path="",
        corpus_hash="synthetic-uniform",
        eot_id=0,
        n_learned_tokens=vocab_size,
        n_train_docs=1,
        n_val_docs=1,
        n_bytes=0,
        skipped_files=0,
        cache_path="",
        from_cache=False,
        prepare_time_s=0.0,
    )
