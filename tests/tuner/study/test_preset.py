"""Preset files: write/load round trip with provenance, built-in names, and a PresetError line for bad files."""

from __future__ import annotations

import pytest
import yaml

from model.config import PRESETS, Phase1Config
from tuner import __version__
from tuner.errors import PresetError
from tuner.study.preset import load_preset, write_preset


def test_round_trip_with_provenance(tmp_path):
    cfg = Phase1Config(vocab_size=512, d_model=64, n_layers=2, n_seq=64, ar_ssm_max_rank=24, target_vram_gb=6.0)
    path = write_preset(
        tmp_path / "sub" / "p.yaml", cfg, study="s1", trial=7, val_ppl=42.5, peak_vram_gib=1.25, device="cpu"
    )
    raw = yaml.safe_load(path.read_text())
    assert set(raw) == {"config", "provenance"}
    assert raw["config"] == cfg.to_dict()  # the full config, every field
    prov = raw["provenance"]
    assert (prov["study"], prov["trial"], prov["val_ppl"], prov["peak_vram_gib"], prov["device"]) == (
        "s1",
        7,
        42.5,
        1.25,
        "cpu",
    )
    assert prov["version"] == __version__ and prov["date"].startswith("20")
    loaded = load_preset(path)
    assert loaded.config == cfg and loaded.provenance == prov and loaded.source == str(path)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_builtin_names(name):
    p = load_preset(name)
    assert p.config == PRESETS[name] and p.provenance == {} and p.source == f"built-in {name}"
    assert p.config is not PRESETS[name]  # a copy: callers cannot edit the table


BAD = [
    ("invalid-yaml", "config: [unclosed\n", "invalid YAML"),
    ("python-tag", "config: !!python/object/apply:os.system ['true']\n", "invalid YAML"),
    ("not-mapping", "- 1\n", "expected a mapping"),
    ("unknown-top", "config: {}\nprovenence: {}\n", "provenence: unknown key"),
    ("missing-config", "provenance: {study: x}\n", "config: missing"),
    ("unknown-field", "config: {dmodel: 64}\n", "config.dmodel: unknown Phase1Config field (did you mean 'd_model'?)"),
    ("bad-value", "config: {d_model: 4}\n", "config.d_model: 4 is out of range"),
    ("bad-type", "config: {htt_phase_encoding: 'yes'}\n", "config.htt_phase_encoding: 'yes' is not true or false"),
    ("bad-provenance", "config: {}\nprovenance: [1]\n", "provenance: expected a mapping"),
]


@pytest.mark.parametrize("case, text, expected", BAD, ids=[c[0] for c in BAD])
def test_bad_files(tmp_path, case, text, expected):
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(PresetError) as info:
        load_preset(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and expected in msg and "\n" not in msg, msg


def test_unknown_name_lists_builtins(tmp_path):
    with pytest.raises(PresetError, match="8gb, 10gb, 24gb, inference"):
        load_preset(str(tmp_path / "missing.yaml"))
