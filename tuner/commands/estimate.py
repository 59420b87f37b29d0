"""`tuner estimate`: predict a training trial's peak GPU memory (NVML, per process) without a GPU.

    tuner estimate --preset 8gb [--batch-size 4] [--json]
    tuner estimate --preset my_preset.yaml
    tuner estimate studies/x.yaml --params ar_ssm_max_rank=64,batch_size=4 [--json]
    tuner estimate --calibrate          # on the GPU: measure and store this device's calibration

The prediction is pure arithmetic (tuner.vram.estimate); the printed table shows the three parts (tensor bytes,
allocator overhead, memory outside the allocator) and the tensor bytes per component at the peak moment.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from tuner.errors import TunerError


class EstimateArgsError(TunerError):
    """Bad `tuner estimate` arguments (--params syntax, missing study or preset)."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser
    p = subparsers.add_parser(
        "estimate",
        help="predict a trial's peak GPU memory (GiB) before it runs",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("study", nargs="?", help="study YAML file (with --params), or omit and give --preset")
    p.add_argument("--preset", help="preset name (8gb, 10gb, 24gb, inference) or preset YAML file")
    p.add_argument("--params", default="", help="k=v,... search-space values applied to the study's model")
    p.add_argument("--batch-size", type=int, default=None, help="override the config's batch_size")
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="where the trial runs (cpu: the CPU tensor-bytes peak, no allocator/outside parts)",
    )
    p.add_argument(
        "--calibration", default=None, help="calibration JSON (default ~/.cache/phase1-tuner/calibration.json)"
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="measure this GPU's outside-the-allocator memory and store it (needs a CUDA GPU)",
    )
    p.add_argument("--json", action="store_true", help="print the prediction as JSON")
    p.set_defaults(func=run)
    return p


def parse_params(text: str) -> dict[str, Any]:
    """`k=v,k2=v2` -> dict; values parsed as YAML scalars (so 64 is an int, 1e-3 a float, true a bool)."""
    import yaml

    out: dict[str, Any] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if "=" not in item:
            raise EstimateArgsError(
                f"--params: {item!r} is not k=v; write e.g. --params ar_ssm_max_rank=32,htt_rank=16"
            )
        k, v = (s.strip() for s in item.split("=", 1))
        if not k:
            raise EstimateArgsError(f"--params: {item!r} has no name before '='")
        try:
            out[k] = yaml.safe_load(v) if v != "" else None
        except yaml.YAMLError:
            raise EstimateArgsError(f"--params: {k}={v!r} is not a value; quote strings, e.g. {k}=tied") from None
    return out


def resolve_config(args: argparse.Namespace) -> Any:
    """The Phase1Config the arguments describe (raises TunerError / ConfigError with one-line messages)."""
    if args.preset and args.study:
        raise EstimateArgsError("give either a study file or --preset, not both")
    if args.preset:
        if args.params:
            raise EstimateArgsError("--params applies to a study file; with --preset edit the preset instead")
        from tuner.study.preset import load_preset

        cfg = load_preset(args.preset).config
    elif args.study:
        from tuner.study.loader import load_spec

        spec = load_spec(args.study)
        cfg = spec.build_config(parse_params(args.params))
    else:
        raise EstimateArgsError("nothing to estimate: give --preset NAME|FILE, or STUDY.yaml --params k=v,...")
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise EstimateArgsError(f"--batch-size: {args.batch_size} must be >= 1")
        cfg = cfg.replace(batch_size=args.batch_size)
    from tuner.study.sizes import check_sizes

    check_sizes(cfg)  # --params / --batch-size bypass the study's ranges: sizes no GPU holds stop here, at once
    return cfg


def run(args: argparse.Namespace) -> int:
    from tuner.study.preset import GPU_PRESETS
    from tuner.vram.calibration import choose_calibration, save_calibration
    from tuner.vram.estimate import estimate
    from tuner.vram.nvml import current_device_key

    if args.calibrate:
        from tuner.vram.calibrate import calibrate_device

        cal = calibrate_device()
        path = save_calibration(cal, args.calibration)
        print(
            json.dumps(cal.to_dict(), indent=2)
            if args.json
            else f"calibrated {cal.key}: context {cal.context_gib:.3f} GiB, outside {cal.outside_gib:.3f} GiB, "
            f"workspace {cal.workspace_gib:.3f} GiB -> {path}"
        )
        return 0
    cfg = resolve_config(args)
    if args.device == "cuda":  # the caller reads the calibration file and NVML: estimate() itself is pure
        choice = choose_calibration(args.calibration, current_device_key())
        est = estimate(
            cfg, choice.calibration, device="cuda", calibrated=choice.calibrated, calibration_source=choice.source
        )
    else:
        est = estimate(cfg, device=args.device)
    if args.json:
        print(json.dumps(est.to_dict(), indent=2))
    else:
        print(format_estimate(est))
        name = getattr(args, "preset", None)
        if name in GPU_PRESETS:
            print(
                f"  note: {name} names the card the tuning guide wrote it for (target_vram_gb {cfg.target_vram_gb:g} "
                "GiB), not this prediction; 8gb and 10gb share the model shape and differ only in ranks, so they "
                "predict about the same"
            )
    return 0


def format_estimate(est: Any) -> str:
    """Human-readable table: total, the three parts, the per-component tensor bytes at the peak moment (parts under
    1 GiB in MiB: tuner.analysis.formatting.mem_text)."""
    from tuner.analysis.formatting import mem_text

    lines = [
        f"predicted peak {est.total_gib:.3f} GiB  (B={est.batch_size}, L={est.n_seq}, device {est.device}, "
        f"peak at {est.peak_moment})",
        f"  tensor bytes (torch max_memory_allocated)  {mem_text(est.tensor_gib):>12}"
        + (f"  (raw {est.tensor_raw_gib:.3f} x {est.tensor_scale:.3f} refined)" if est.tensor_scale != 1.0 else ""),
        f"  allocator (reserved - allocated)          {mem_text(est.allocator_gib):>12}"
        + (
            f"  (CE hole {est.ce_hole_kappa:.2f} x {est.ce_chunk_gib:.3f} GiB, kappa from {est.kappa_source})"
            if est.device == "cuda"
            else ""
        )
        + (
            f"  (recompute hole {mem_text(est.recompute_hole_gib)} over the recomputed blocks' "
            f"{est.recompute_gib:.3f} GiB)"
            if est.device == "cuda" and est.recompute_hole_gib > 0
            else ""
        ),
        f"  outside the allocator (context, kernels)  {mem_text(est.outside_gib):>12}  [{est.outside_source}]",
        "  tensor bytes per component at the peak:",
    ]
    for name, gib in sorted(est.components.items(), key=lambda kv: -kv[1]):
        if gib > 0:
            lines.append(f"    {name:<34} {mem_text(gib):>12}")
    if not est.calibrated:
        lines.append("  note: " + est.outside_source)
    for n in est.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)
