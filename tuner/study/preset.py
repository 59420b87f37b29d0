"""Preset files: a full Phase1Config under `config:` plus `provenance:` (where it came from), as YAML.

    config: {vocab_size: 50257, d_model: 1024, ...}   # every Phase1Config field
    provenance: {study: NAME, trial: 12, val_ppl: 17.3, peak_vram_gib: 7.41, device: ..., date: ..., version: ...}

Loading validates the config exactly like a study's fixed `model:` section (Phase1Config.from_dict, unknown keys
named). `load_preset` also accepts the built-in names of model.PRESETS (8gb, 10gb, 24gb, inference).
"""

from __future__ import annotations

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
        raise PresetError(
            f"{text}: no such file or built-in preset; pass a preset file written by `tuner export` "
            f"or one of: {', '.join(PRESETS)}"
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
