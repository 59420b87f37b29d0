"""tuner.study.yaml_input: hostile and broken YAML fails fast with one problem naming the line (size cap, nesting,
alias bombs, huge integers, duplicate keys), through load_spec and load_preset too."""

from __future__ import annotations

import time

import pytest
import yaml

from tests.tuner.tiny import BASE, write
from tuner.errors import PresetError, SpecError
from tuner.study.loader import load_spec
from tuner.study.preset import load_preset
from tuner.study.yaml_input import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    YamlInputError,
    parse_yaml,
    read_yaml,
)


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs" shape: each level lists the previous one `width` times (width^levels values)."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _refused(text: str) -> str:
    t0 = time.monotonic()
    with pytest.raises(YamlInputError) as info:
        parse_yaml(text)
    assert time.monotonic() - t0 < 2.0
    return str(info.value)


def test_plain_yaml_and_shared_aliases_are_read():
    assert parse_yaml("a: &x [1, 2]\nb: *x\nc: {d: 3}\n") == {"a": [1, 2], "b": [1, 2], "c": {"d": 3}}
    assert parse_yaml("n: 9223372036854775807\n") == {"n": 2**63 - 1}


def test_an_alias_bomb_fails_fast():
    # width^levels = 387M values once expanded; yaml.safe_load itself builds it in no time, but anything walking it
    # (dumping, validating) takes minutes and GiB: refused on the node graph
    msg = _refused(alias_bomb())
    assert f"more than {MAX_NODES} values once aliases" in msg


def test_a_self_referencing_alias_is_refused():
    assert "refers to the collection that contains it" in _refused("a: &a [1, *a]\n")


def test_deep_nesting_fails_fast_without_recursion_error():
    msg = _refused("a: " + "[" * 20_000 + "]" * 20_000 + "\n")
    assert f"nested deeper than {MAX_DEPTH} levels" in msg and msg.startswith("line 1")
    assert parse_yaml("a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)) is not None  # the limit itself is fine


@pytest.mark.parametrize("value", ["9" * 400, str(2**63), "-" + str(2**63), "0x" + "f" * 40])
def test_huge_integers_are_refused_with_their_line(value):
    msg = _refused(f"a: 1\nb: {value}\n")
    assert msg.startswith("line 2: integer") and "2^63" in msg


def test_duplicate_keys_name_the_key_and_both_lines():
    assert (
        _refused("name: a\nx: 1\nname: b\n") == "line 3: key 'name' appears twice (first on line 1); keep one of them"
    )
    assert "key 'lr' appears twice" in _refused("model:\n  lr: 1\n  lr: 2\n")
    assert parse_yaml("a: &m {x: 1}\nb:\n  <<: *m\n  x: 2\n") == {"a": {"x": 1}, "b": {"x": 2}}  # merge keys override


def test_the_file_size_is_capped_before_parsing(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("x: " + "a" * (20 * 2**20) + "\n")  # 20 MiB took 49 s before its error
    t0 = time.monotonic()
    with pytest.raises(YamlInputError) as info:
        read_yaml(p)
    assert time.monotonic() - t0 < 2.0
    assert f"larger than {MAX_FILE_BYTES // 1024} KiB" in str(info.value)


def test_a_file_just_under_the_cap_parses_within_2_s(tmp_path):
    p = tmp_path / "ok.yaml"
    row = "k{:06d}: [1, 2.5, text]\n"
    n = MAX_FILE_BYTES // len(row.format(0))
    p.write_text("".join(row.format(i) for i in range(n)))
    assert p.stat().st_size <= MAX_FILE_BYTES
    t0 = time.monotonic()
    assert len(read_yaml(p)) == n
    assert time.monotonic() - t0 < 2.0


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(YamlInputError, match="is a folder"):
        read_yaml(tmp_path)
    p = tmp_path / "latin1.yaml"
    p.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(YamlInputError, match="not UTF-8"):
        read_yaml(p)


def test_study_and_preset_loaders_use_the_bounds(tmp_path):
    study = write(tmp_path, yaml.safe_dump(BASE, sort_keys=False) + "name: other\n")
    with pytest.raises(SpecError) as info:
        load_spec(study)
    assert str(info.value).startswith(f"{study}: line ") and "key 'name' appears twice" in str(info.value)
    bomb = write(tmp_path, alias_bomb(), "bomb.yaml")
    with pytest.raises(SpecError, match="once aliases"):
        load_spec(bomb)
    preset = tmp_path / "p.yaml"
    preset.write_text("config: {d_model: 32}\nprovenance: {}\nconfig: {d_model: 64}\n")
    with pytest.raises(PresetError) as pinfo:
        load_preset(preset)
    assert "key 'config' appears twice" in str(pinfo.value) and "\n" not in str(pinfo.value)
