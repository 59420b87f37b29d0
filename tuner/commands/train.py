"""`tuner train --preset FILE|NAME`: rebuild a preset's config and train it with the tuner's data and trial runner.

    tuner train --preset best.yaml [--json]                       # data and budget from the preset's provenance
    tuner train --baseline dense --preset 8gb                     # the dense reference of that shape
    tuner train --preset 8gb --study studies/phase1_8gb.yaml      # data and budget from a study file
    tuner train --preset best.yaml --data stdlib --train-tokens 200000 --eval-tokens 50000

The run goes through the same child process, VRAM guard and measurements as a tuning trial, with the config's
`target_vram_gb` as the ceiling (enforced on a GPU; on CPU the peak is the labelled tensor-bytes figure and is
only compared). `--json` prints ONE JSON line: val_ppl, peak_vram_gib, peak_vram_kind, end_reason, ...
Where each setting comes from, first found wins: the flag, the preset's provenance (`data`, `train_tokens`,
`eval_tokens`, written by `tuner export`), the --study file, the defaults (stdlib text, 200000 / 50000 tokens).
The training step likewise: --step, the preset's `step_mode`, the --study file's `training.step`, eager.

Built-in names: `cpu` (a tiny model with its own data and budget: about a minute on 2 cores), and the guide's GPU
presets 8gb, 10gb, 24gb (d_model 1024, 12 layers, 2048-token sequences: minutes per step on a CPU, so on a CPU
train warns and prints an ETA from the measured first step). `inference` is refused: its LNS weights are
inference-only.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from tuner.commands import add_trial_process_options
from tuner.commands.train_baseline import add_baseline_options
from tuner.study.spec import STEP_MODES, StepMode

if TYPE_CHECKING:
    from tuner.trial.outcome import TrialOutcome

DEFAULT_TRAIN_TOKENS = 200_000
DEFAULT_EVAL_TOKENS = 50_000


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser
    p = subparsers.add_parser(
        "train", help="train a preset's config (exported file or built-in name)", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--preset",
        default=None,
        help="preset file written by `tuner export`, or cpu (tiny, about a minute on a laptop), 8gb, 10gb, 24gb "
        "(GPU-sized; with --baseline: its shape)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON line with val_ppl and peak_vram_gib")
    p.add_argument("--study", default=None, help="study file whose data: and budget: to use")
    p.add_argument(
        "--data", default=None, help="'stdlib', a path to text files, or a YAML mapping like the study's data: section"
    )
    p.add_argument("--train-tokens", type=int, default=None, help="training tokens")
    p.add_argument("--eval-tokens", type=int, default=None, help="validation tokens")
    p.add_argument(
        "--step",
        default=None,
        choices=STEP_MODES,
        help="training step: eager, compile (torch.compile), compile_graphs (compiled + CUDA graphs, CUDA only); "
        "default: the preset's step_mode, else the --study file's training.step, else eager",
    )
    p.add_argument("--timeout-s", type=float, default=24 * 3600.0, help="wall-clock limit, s")
    p.add_argument("--gpu", type=int, default=None, help="physical GPU index to train on")
    add_baseline_options(p)
    add_trial_process_options(p)
    p.set_defaults(func=run)
    return p


def parse_data(text: str) -> Any:
    """--data value -> model.data.DataSource. 'stdlib' | a path | a YAML mapping (study `data:` syntax)."""
    import yaml

    from model.corpus import DataSource

    value = yaml.safe_load(text) if text.strip().startswith("{") else text
    if isinstance(value, dict):
        mapping = dict(value)
        mapping["kind"] = mapping.pop("source", mapping.get("kind", "stdlib"))
        return DataSource.from_dict(mapping, where="--data")
    if value == "stdlib":
        return DataSource(kind="stdlib")
    return DataSource(kind="files", path=str(value))


def _settings(args: argparse.Namespace, preset: Any) -> tuple[Any, int, int, str, StepMode]:
    """(DataSource, train_tokens, eval_tokens, where the data came from, the training step)."""
    from model.corpus import DataSource

    prov = preset.provenance
    spec = None
    if args.study is not None:
        from tuner.study.loader import load_spec

        spec = load_spec(args.study)
    if args.data is not None:
        data, src = parse_data(args.data), "--data"
    elif prov.get("data") is not None:  # a malformed value is a DataError naming it (from_dict), never skipped
        data, src = DataSource.from_dict(prov["data"], where=f"{preset.source}: provenance.data"), "provenance"
    elif spec is not None:
        data, src = spec.data, args.study
    else:
        data, src = DataSource(kind="stdlib"), "default"
    train = _tokens(
        "--train-tokens",
        args.train_tokens,
        preset,
        "train_tokens",
        spec.budget.train_tokens if spec else None,
        DEFAULT_TRAIN_TOKENS,
    )
    evals = _tokens(
        "--eval-tokens",
        args.eval_tokens,
        preset,
        "eval_tokens",
        spec.budget.eval_tokens if spec else None,
        DEFAULT_EVAL_TOKENS,
    )
    return data, train, evals, src, _step(args.step, preset, spec.training.step if spec else None)


def _step(given: str | None, preset: Any, from_study: StepMode | None) -> StepMode:
    """The training step: the flag, else the preset's provenance `step_mode`, else the --study file's, else eager.
    A present but unknown value is an error naming where it is, never skipped."""
    from tuner.errors import PresetError

    if given is not None:
        return StepMode(given)  # argparse's choices checked it
    value = preset.provenance.get("step_mode")
    if value is not None:
        if value not in STEP_MODES:
            raise PresetError(
                f"{preset.source}: provenance.step_mode: {value!r} is not a step; use one of: "
                f"{', '.join(STEP_MODES)}, or pass --step"
            )
        return StepMode(value)
    return from_study if from_study is not None else StepMode.EAGER


def _tokens(flag: str, given: int | None, preset: Any, key: str, from_study: int | None, default: int) -> int:
    """A token budget: the flag, else the preset's provenance `key`, else the --study file's, else the default.
    A present but malformed value is an error naming where it is, never skipped."""
    from tuner.errors import PresetError, TunerError

    if given is not None:
        if given < 1:
            raise TunerError(f"{flag}: {given} must be a positive number of tokens")
        return int(given)
    value = preset.provenance.get(key)
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PresetError(
                f"{preset.source}: provenance.{key}: {value!r} is not a positive integer; fix it, "
                f"remove it, or pass {flag}"
            )
        return value
    return int(from_study if from_study is not None else default)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tuner.errors import TunerError
    from tuner.study.preset import load_preset

    config: Any
    preset: Any  # a tuner.study.preset.Preset, or the BaselineRun (both carry `source` and `provenance`)
    if args.baseline is not None:
        from tuner.commands.train_baseline import baseline_run

        preset = baseline_run(args)
        config, ceiling = preset.config, preset.ceiling_gib
    else:
        from tuner.commands.train_baseline import shape_flags_given

        if args.preset is None:
            raise TunerError("train: pass --preset FILE|NAME (a Phase 1 config) or --baseline dense")
        if shape_flags_given(args):
            raise TunerError(f"train: {shape_flags_given(args)[0]} is a --baseline flag; add --baseline dense")
        refuse_inference(args.preset)
        preset = load_preset(args.preset)
        config = preset.config
        ceiling = float(config.target_vram_gb)
    data, train_tokens, eval_tokens, data_from, step = _settings(args, preset)
    data.check()

    from tuner.trial.outcome import TrialRequest
    from tuner.trial.runner import TrialRunner

    runner = TrialRunner(
        gpu=args.gpu, cache_dir=args.cache_dir or Path.cwd() / ".phase1_cache", cpu_threads=args.threads or None
    )

    steps = -(-train_tokens // (config.batch_size * config.n_seq))
    eta = FirstStepEta(steps) if _gpu_preset_name(args.preset) else None

    def progress(msg: dict[str, Any]) -> None:
        if eta is not None:
            line = eta.on_progress(msg)
            if line:
                print(line, file=sys.stderr, flush=True)  # before the step line: the user decides now
        if not args.json:
            print(f"step {msg['step']} tokens {msg['tokens']} loss {msg['loss']:.4f}", file=sys.stderr, flush=True)

    try:
        if not args.json:
            print(
                f"train: {preset.source}, data {data.describe()} ({data_from}), {train_tokens} train / "
                f"{eval_tokens} eval tokens, ceiling {ceiling:g} GiB, step {step.value}",
                file=sys.stderr,
                flush=True,
            )
        if eta is not None:
            runner.ensure_started()  # the device is known once the child is ready
            if runner.device == "cuda":
                eta = None
            else:
                print(gpu_preset_warning(args.preset, config, steps), file=sys.stderr, flush=True)
        if step.needs_cuda:  # refused before training, in one line (the trainer's own error would end the run)
            runner.ensure_started()
            problem = step.device_problem(str(runner.device))
            if problem is not None:
                raise TunerError(f"train: {problem} (pass --step)")
        request = TrialRequest(
            config=config.to_dict(),
            data=data,
            train_tokens=train_tokens,
            eval_tokens=eval_tokens,
            ceiling_gib=ceiling,
            step=step,
        )
        outcome = runner.run(request, args.timeout_s, on_progress=progress)
        device = runner.device
    finally:
        runner.close()
    line = _summary(outcome, device or "cpu", ceiling, train_tokens, eval_tokens, preset)
    line["step_mode"] = step.value
    if args.json:
        print(json.dumps(line), flush=True)
    else:
        for k, v in line.items():
            print(f"{k:>16}: {v}")
    if line["end_reason"] not in ("complete",):
        if args.json:
            return 1
        raise TunerError(f"train: {preset.source}: ended with {line['end_reason']}: {line.get('error_summary', '')}")
    return 0


def refuse_inference(name: str) -> None:
    """`--preset inference` is evaluation-only (LNS weights cannot be trained): a PresetError saying what to do."""
    from pathlib import Path

    from tuner.errors import PresetError
    from tuner.study.preset import INFERENCE_PRESET

    if name == INFERENCE_PRESET and not Path(name).exists():
        raise PresetError(
            "--preset inference: LNS weights are inference-only and cannot be trained; train 8gb, 10gb or 24gb "
            "(or cpu), or tune lns_enabled: true in a study (its trials train the float model and evaluate the "
            "LNS conversion)"
        )


def _gpu_preset_name(name: str | None) -> bool:
    from pathlib import Path

    from tuner.study.preset import GPU_PRESETS

    return name in GPU_PRESETS and not Path(str(name)).exists()


def gpu_preset_warning(name: str, config: Any, steps: int) -> str:
    """The line printed before a GPU preset trains on a CPU."""
    return (
        f"warning: {name} is a GPU preset (d_model {config.d_model}, {config.n_layers} layers, "
        f"{config.batch_size} x {config.n_seq} tokens per step, {steps} steps); on a CPU each step takes minutes. "
        "Timing the first step for an ETA; Ctrl-C stops, `--preset cpu` trains a tiny model in about a minute"
    )


class FirstStepEta:
    """From the first progress message (step s after elapsed_s seconds of training): one ETA line, once.

    ETA = elapsed_s / s * (steps - s): the measured time per step times the steps left (seconds)."""

    def __init__(self, steps: int) -> None:
        self.steps = int(steps)
        self.done = False

    def on_progress(self, msg: dict[str, Any]) -> str | None:
        if self.done:
            return None
        step, elapsed = int(msg["step"]), float(msg["elapsed_s"])
        if step < 1:
            return None
        self.done = True
        left = max(0, self.steps - step)
        per_step = elapsed / step
        eta_s = per_step * left
        import datetime as dt

        end = dt.datetime.now().astimezone() + dt.timedelta(seconds=eta_s)
        return (
            f"warning: the first {'step' if step == 1 else f'{step} steps'} took {per_step * step:.1f} s "
            f"({per_step:.1f} s per step); {left} steps left: ETA {_duration(eta_s)} (about {end:%H:%M})"
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _summary(
    outcome: TrialOutcome, device: str, ceiling: float, train_tokens: int, eval_tokens: int, preset: Any
) -> dict[str, Any]:
    kind = outcome.kind
    line: dict[str, Any] = {
        "val_ppl": None,
        "peak_vram_gib": None,
        "peak_vram_kind": None,
        "end_reason": kind,
        "ceiling_gib": ceiling,
        "device": outcome.device_name,
        "train_tokens": train_tokens,
        "eval_tokens": eval_tokens,
        "preset": preset.source,
    }
    if kind == "complete":
        from tuner.trial.outcome import peak_vram

        r = outcome.result or {}
        measured = peak_vram(outcome, device=device, ceiling_gib=ceiling)
        peak, peak_kind = measured.gib, measured.kind
        line.update(
            val_ppl=r["val_ppl"],
            val_loss=r["val_loss"],
            peak_vram_gib=peak,
            peak_vram_kind=peak_kind,
            torch_peak_gib=r["peak_torch_gib"],
            tokens_per_s=r["tokens_per_s"],
            steps=r["steps"],
            params_total=int(sum(v for k, v in (r.get("param_counts") or {}).items() if k != "total")),
        )
        if peak > ceiling:
            line["end_reason"] = "vram_ceiling"  # CPU only: the GPU guard stops the run instead
            line["error_summary"] = f"peak {peak:.3f} GiB > target_vram_gb {ceiling:g}"
        if preset.provenance.get("val_ppl") is not None:
            line["preset_val_ppl"] = preset.provenance["val_ppl"]
            line["ppl_rel_diff"] = abs(r["val_ppl"] - preset.provenance["val_ppl"]) / preset.provenance["val_ppl"]
    else:
        line["peak_vram_gib"] = outcome.peak_gib or outcome.nvml_peak_gib
        line["error_summary"] = outcome.error_summary
    return line
