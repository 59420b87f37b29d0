"""Preset files: a full Phase1Config under `config:` plus `provenance:` (where it came from), as YAML.

    config: {vocab_size: 50257, d_model: 1024, ...}   # every Phase1Config field
    provenance: {study: NAME, trial: 12, val_ppl: 17.3, peak_vram_gib: 7.41, device: ..., date: ..., version: ...}

Loading validates the config exactly like a study's fixed `model:` section (Phase1Config.from_dict, unknown keys
named). `load_preset` also accepts the built-in names: the guide's GPU presets of model.PRESETS (8gb, 10gb, 24gb,
inference; the name is the card's memory the config was written for, `target_vram_gb`, not its predicted peak) and
`cpu` (CPU_PRESET below: a tiny model that trains on a laptop in about a minute).
"""

from __future__ import annotations

import copy
import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model.config import PRESETS, ConfigError, Phase1Config
from tuner.errors import PresetError
from tuner.fileio import atomic_write_text
from tuner.study.sizes import check_sizes
from tuner.study.yaml_input import YamlInputError, read_yaml

PROVENANCE_KEYS = ("study", "trial", "val_ppl", "peak_vram_gib", "device", "date", "version")


@dataclass(frozen=True)
class Preset:
    config: Phase1Config
    provenance: dict[str, Any] = field(default_factory=dict)  # empty for a built-in preset
    source: str = ""  # file path or "built-in NAME"


# The guide's presets are written for a GPU: their model (d_model 1024, 12 layers, 2048-token sequences, batch 8)
# takes minutes per step on a CPU. `tuner train` warns with an ETA when one of them runs on a CPU.
GPU_PRESETS = ("8gb", "10gb", "24gb")
# Evaluation only: LNS weights cannot be trained (Phase1Config.check_trainable); `tuner train` refuses it by name.
INFERENCE_PRESET = "inference"

# `cpu`: the quickstart's shape (vocab 2048, d_model 64, 2 layers, 128-token sequences, float32) with mid-range
# ranks and the learning rate the quickstart's trials beat the unigram PPL with. Its provenance carries the data and
# budget `tuner train` reads (128 steps of 8 x 128 tokens on 2 MiB of stdlib text). Measured on 2 shared CPU cores:
# 16 s in all (tokenizer cached), val PPL 409 against the unigram PPL 704 of the same validation tokens.
CPU_PRESET = Preset(
    Phase1Config(
        vocab_size=2048,
        d_model=64,
        n_layers=2,
        n_seq=128,
        batch_size=8,
        dtype="float32",
        loss_chunk_size=0,
        learning_rate=4.0e-3,
        ar_ssm_max_rank=16,
        ffn_rank=16,
        htt_rank=8,
        use_gradient_checkpointing=False,
        target_vram_gb=1.0,
        seed=0,
    ),
    {"data": {"kind": "stdlib", "max_bytes": 2 * 1024 * 1024}, "train_tokens": 131072, "eval_tokens": 8192},
    "built-in cpu",
)
BUILTIN_NAMES = (*PRESETS, "cpu")


def preset_text(config: Phase1Config, provenance: Mapping[str, Any]) -> str:
    """The YAML text of a preset (provenance keys in PROVENANCE_KEYS order, others after)."""
    prov = {k: provenance[k] for k in PROVENANCE_KEYS if k in provenance}
    prov.update({k: v for k, v in provenance.items() if k not in prov})
    header = "# Phase 1 preset written by `tuner export`; load with `tuner train --preset FILE`. Memory in GiB.\n"
    return header + str(yaml.safe_dump({"config": config.to_dict(), "provenance": prov}, sort_keys=False))


def write_preset(
    path: str | Path,
    config: Phase1Config,
    *,
    study: str,
    trial: int,
    val_ppl: float,
    peak_vram_gib: float,
    device: str | None,
    date: str | None = None,
    force: bool = True,
    **extra: Any,
) -> Path:
    """Write a preset file (parent folders created); returns its path. `force=False` refuses to replace an existing
    file (OutputError), as `tuner export` does without --force."""
    from tuner import __version__

    provenance = {
        "study": study,
        "trial": int(trial),
        "val_ppl": float(val_ppl),
        "peak_vram_gib": float(peak_vram_gib),
        "device": device,
        "date": date or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "version": __version__,
        **extra,
    }
    # atomic, and never onto a folder or device; an existing file only with force (tuner.fileio)
    atomic_write_text(path, preset_text(config, provenance), force=force)
    return Path(path)


def load_preset(name_or_path: str | Path) -> Preset:
    """A preset file, or a built-in name. Raises PresetError naming the file, the key and the fix."""
    text = str(name_or_path)
    p = Path(text)
    if not p.exists():
        if text in PRESETS:
            return Preset(PRESETS[text].replace(), {}, f"built-in {text}")
        if text == "cpu":
            return Preset(CPU_PRESET.config.replace(), copy.deepcopy(CPU_PRESET.provenance), CPU_PRESET.source)
        raise PresetError(
            f"{text}: no such file or built-in preset; pass a preset file written by `tuner export` "
            f"or one of: {', '.join(BUILTIN_NAMES)}"
        )
    if not p.is_file():
        raise PresetError(f"{p}: is not a file; pass a preset YAML file")
    try:
        data = read_yaml(p)  # bounded: size, nesting, aliases, integers; duplicate keys refused
    except YamlInputError as exc:
        raise PresetError(f"{p}: {exc.problem}; {exc.fix} or export the preset again") from None
    if not isinstance(data, Mapping):
        raise PresetError(f"{p}: expected a mapping with `config:` and `provenance:`; export the preset again")
    for key in data:
        if key not in ("config", "provenance"):
            raise PresetError(f"{p}: {key}: unknown key; a preset has only config: and provenance:")
    if "config" not in data:
        raise PresetError(f"{p}: config: missing; a preset holds the full Phase1Config under config:")
    provenance = data.get("provenance") or {}
    if not isinstance(provenance, Mapping):
        raise PresetError(f"{p}: provenance: expected a mapping; remove it or export the preset again")
    try:
        config = Phase1Config.from_dict(data["config"], where="config")
        check_sizes(config)
    except ConfigError as exc:
        msg = str(exc)
        raise PresetError(
            f"{p}: {msg if msg.startswith('config') else 'config.' + msg}; fix the value or export the preset again"
        ) from None
    return Preset(config, dict(provenance), str(p))
