"""Hostile study and preset files for the fuzzer (issue 17 item 9-10): each one is refused, in one line, within 2 s.

Kinds: alias bombs, deep nesting, duplicate keys, huge integers, huge grids, bad types (enqueue_presets: [[8gb]],
seeds >= 2^32, nested lists where names go), sizes no GPU holds, names over the storage's 512 characters, files
over the size cap. Each starts from the fuzzer's valid base study (testing.fuzz.base_study) with one such change,
so a pass means the change was refused, not something else. Checked with testing.fuzz.check_study_text /
check_preset_text (exit 2, one `error:` line, no study stored, ERROR_WITHIN_S).
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from hypothesis import strategies as st

from testing.fuzz import _get, _paths, _set, base_preset, base_study

HOSTILE_KINDS = (
    "alias_bomb",
    "deep_nesting",
    "duplicate_key",
    "huge_int",
    "huge_grid",
    "bad_type",
    "huge_size",
    "long_name",
    "huge_file",
)


def alias_bomb(levels: int, width: int, prefix: str = "b") -> list[str]:
    """Lines of a "billion laughs": level i lists level i-1 `width` times (width^levels values when expanded)."""
    lines = [f"{prefix}0: &{prefix}0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"{prefix}{i}: &{prefix}{i} [" + ", ".join([f"*{prefix}{i - 1}"] * width) + "]")
    return lines


def _dump(spec: Any) -> str:
    return str(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))


def _numeric_paths(spec: Any) -> list[tuple[Any, ...]]:
    return [p for p in _paths(spec) if isinstance(_get(spec, p), int) and not isinstance(_get(spec, p), bool)]


@st.composite
def hostile_study(draw: Any) -> str:
    """A valid tiny study with one hostile change of a kind in HOSTILE_KINDS."""
    spec = base_study()
    kind = draw(st.sampled_from(HOSTILE_KINDS))
    if kind == "alias_bomb":
        levels, width = draw(st.integers(6, 12)), draw(st.integers(7, 12))  # >= 117k values, up to 8.9e12
        where = draw(st.sampled_from(["enqueue_presets", "objectives", "n_trials"]))
        text = _dump(spec).replace(f"{where}:", f"zz_{where}:", 1) if where in spec else _dump(spec)
        return "\n".join(alias_bomb(levels, width)) + f"\n{where}: *b{levels - 1}\n" + text
    if kind == "deep_nesting":
        depth = draw(st.sampled_from([33, 100, 1000, 20_000, 100_000]))
        bracket = draw(st.sampled_from(["[]", "{}"]))
        inner = "[" * depth + "]" * depth if bracket == "[]" else "{a: " * depth + "1" + "}" * depth
        spec["n_trials"] = "NESTED"
        return _dump(spec).replace("NESTED", inner, 1)
    if kind == "duplicate_key":
        lines = _dump(spec).splitlines()
        keyed = [i for i, ln in enumerate(lines) if re.match(r"^\s*[A-Za-z_][A-Za-z0-9_]*:", ln)]
        i = draw(st.sampled_from(keyed))
        indent, key = re.match(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*):", lines[i]).groups()  # type: ignore[union-attr]
        value = draw(st.sampled_from(["1", "x", "true", "[a]", "{b: 2}"]))
        # inserted right after the key's own line, at its indentation: the same mapping (before its nested lines,
        # which then belong to the duplicate; the key still appears twice in one mapping)
        return "\n".join([*lines[: i + 1], f"{indent}{key}: {value}", *lines[i + 1 :]]) + "\n"
    if kind == "huge_int":
        path = draw(st.sampled_from(_numeric_paths(spec)))
        digits = draw(st.sampled_from([20, 41, 400, 4301, 20_000]))
        sign = draw(st.sampled_from(["", "-"]))
        _set(spec, path, "HUGE_INT")
        return _dump(spec).replace("HUGE_INT", sign + "9" * digits, 1)
    if kind == "huge_grid":
        spec["sampler"] = {"name": "grid"}
        high = draw(st.sampled_from([3 * 10**8, 10**6, 10**12, 2**62]))
        space = {"ffn_rank": {"type": "int", "low": 1, "high": high}}
        if draw(st.booleans()):  # many points only as a product of two parameters
            space = {
                "ffn_rank": {"type": "int", "low": 1, "high": 400},
                "ar_ssm_l1_regularization": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.5 / 1000},
            }
        spec["search_space"] = space
        return _dump(spec)
    if kind == "bad_type":
        target, value = draw(
            st.sampled_from(
                [
                    (("enqueue_presets",), [["8gb"]]),
                    (("enqueue_presets",), [{"8gb": 1}]),
                    (("enqueue_presets",), ["8gb", ["10gb"]]),
                    (("sampler", "seed"), 2**32),
                    (("sampler", "seed"), 2**63 - 1),
                    (("sampler", "seed"), [1]),
                    (("objectives",), [["val_ppl"]]),
                    (("name",), ["a", "b"]),
                    (("name",), {"a": 1}),
                    (("search_space", "use_gradient_checkpointing", "choices"), [[True], [False]]),
                ]
            )
        )
        _set(spec, target, value)
        return _dump(spec)
    if kind == "huge_size":
        field, value = draw(
            st.sampled_from(
                [
                    ("vocab_size", 10**9),
                    ("vocab_size", 99999999999999999),
                    ("n_layers", 10**5),
                    ("d_model", 10**9),
                    ("batch_size", 2**40),
                    ("n_seq", 2**40),
                ]
            )
        )
        spec["model"][field] = value
        spec["search_space"].pop(field, None)
        return _dump(spec)
    if kind == "long_name":
        spec["name"] = "s" * draw(st.sampled_from([513, 1000, 10_000]))
        return _dump(spec)
    # huge_file: a valid study padded (comments, then a long scalar) past the size cap
    size = draw(st.sampled_from([65 * 1024, 2**20, 20 * 2**20]))
    pad = draw(st.sampled_from(["comment", "scalar"]))
    text = _dump(spec)
    if pad == "comment":
        return text + ("# " + "x" * 1022 + "\n") * (size // 1024 + 1)
    return text + "zz_padding: " + "x" * size + "\n"


@st.composite
def hostile_preset(draw: Any) -> str:
    """A preset with one hostile change (alias bomb, nesting, duplicate key, huge integer, huge size, big file)."""
    p = base_preset()
    kind = draw(st.sampled_from(["alias_bomb", "deep_nesting", "duplicate_key", "huge_int", "huge_size", "huge_file"]))
    text = _dump(p)
    if kind == "alias_bomb":
        return "\n".join(alias_bomb(draw(st.integers(6, 10)), draw(st.integers(8, 12)))) + "\n" + text
    if kind == "deep_nesting":
        depth = draw(st.sampled_from([40, 20_000]))
        return text.replace("  d_model: 32", "  d_model: " + "[" * depth + "]" * depth, 1)
    if kind == "duplicate_key":
        key = draw(st.sampled_from(["config", "provenance"]))
        return text + f"{key}: {{}}\n"
    if kind == "huge_int":
        key = draw(st.sampled_from(["d_model", "vocab_size", "seed", "batch_size"]))
        return re.sub(rf"(?m)^  {key}: .*$", f"  {key}: " + "7" * draw(st.sampled_from([25, 400, 5000])), text)
    if kind == "huge_size":
        key, value = draw(st.sampled_from([("vocab_size", 10**9), ("n_layers", 10**6), ("d_model", 2**40)]))
        p["config"][key] = value
        return _dump(p)
    return text + ("# " + "x" * 1022 + "\n") * 100
