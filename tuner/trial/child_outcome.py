"""How the trial child (tuner.trial.child) turns a run into the flat outcome mapping it sends the worker: results
as JSON values, the guard's and torch's measurements, an exception as a one-line summary and a bounded traceback;
and the measured inference pass after training (LNS-converted when the config asks for LNS). Memory in GiB."""

from __future__ import annotations

import dataclasses
import math
import traceback
from typing import Any

from tuner.units import GIB


def final_inference(
    result: Any, config: Any, data: Any, eval_tokens: int, device: str, guard: Any, *, compiled: bool = False
) -> dict[str, Any]:
    """The trial's measured inference pass (model.inference.measure_inference) of the model as evaluated: the
    trained model from `result` (taken out of it, so it is freed here), converted to LNS in place first when the
    config asks for LNS (its val_loss / val_ppl then replace the float model's). Returns the eval_* result fields;
    on CUDA also `eval_nvml_gib`, one NVML reading of this process right after the pass (the CUDA context plus the
    allocator's reserved memory; not a peak), when the guard's NVML lists the process. `compiled`: the training
    step was torch.compiled (the pass then runs the blocks eagerly)."""
    from model.inference import measure_inference
    from model.lns_linear import convert_to_lns

    trained, result.model = result.model, None
    out: dict[str, Any] = {}
    lns = bool(getattr(config, "lns_enabled", False))  # a DenseConfig has no LNS
    if lns:
        out["lns_converted_linears"] = int(convert_to_lns(trained, config))
    m = measure_inference(trained, data, eval_tokens, config, device, eager=compiled)
    if lns:
        out.update(val_loss=m.val_loss, val_ppl=m.val_ppl)
    out.update(
        eval_tokens_per_s=m.tokens_per_s, eval_peak_gib=m.peak_gib, eval_peak_kind=m.peak_kind, eval_time_s=m.seconds
    )
    used = guard.sample_once() if guard is not None else None
    if used is not None:
        out["eval_nvml_gib"] = float(used)
    return out


def result_dict(result: Any) -> dict[str, Any]:
    """TrainResult -> JSON-ready dict (the model, if any, is left out)."""
    fields = [f.name for f in dataclasses.fields(result)] if dataclasses.is_dataclass(result) else list(vars(result))
    out = {}
    for name in fields:
        if name == "model":
            continue
        out[name] = jsonable(getattr(result, name))
    out["val_ppl_float"] = out.get("val_ppl")  # the trained float model's; an LNS trial then replaces val_ppl
    return out


def jsonable(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return jsonable(dataclasses.asdict(v))
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    try:
        f = float(v)  # numpy / torch scalars
        return f if math.isfinite(f) else None
    except (TypeError, ValueError):
        return str(v)


def guard_attrs(guard: Any) -> dict[str, Any]:
    if guard is None:
        return {}
    return {
        "nvml_peak_gib": guard.peak_gib,
        "nvml_samples": guard.n_samples,
        "nvml_pid_seen": guard.n_seen,
        "nvml_lookup": guard.nvml_lookup,
        "allocator_fraction": guard.allocator_fraction,
    }


def torch_peak(device: str) -> dict[str, Any]:
    if device != "cuda":
        return {}
    import torch

    return {"torch_peak_gib": torch.cuda.max_memory_allocated(0) / GIB}


def exc_fields(e: BaseException) -> dict[str, Any]:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return {"error_summary": f"{type(e).__name__}: {e}"[:500], "traceback": "".join(tb[-12:])[-4000:]}


def error_outcome(e: BaseException) -> dict[str, Any]:
    return {"kind": "error", **exc_fields(e)}
