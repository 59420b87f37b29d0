"""Bounded, strict YAML input for study files and presets: every hostile or broken file fails in well under 2 s
with one problem and its fix (YamlInputError), before any of it is used.

Bounds (why each):
- size: at most MAX_FILE_BYTES (64 KiB). Study files and presets hold a few KiB; the pure-Python parser
  takes about 10 s per MiB of dense content, so the cap also bounds the parse time (under a second).
- nesting: at most MAX_DEPTH (32) levels. The composer recurses per level (20,000 levels hit RecursionError);
  a study nests 5 levels deep.
- alias expansion: at most MAX_NODES (100,000) values once aliases are expanded, and no alias inside its own
  anchor. A "billion laughs" file is a few lines whose expansion would take minutes and GiB of memory in whoever
  walks it; the expanded count is computed on the node graph (memoised), so the check itself is cheap.
- integers: |value| < 2^63 and at most MAX_INT_CHARS characters. Nothing in a study needs more; a 400-digit
  integer otherwise surfaces as an OverflowError deep in a float conversion.
- duplicate keys: refused, naming the key and both lines (YAML requires unique keys; PyYAML silently keeps the
  last one, so a second `name:` silently made a different study).
Only safe constructors are used (no Python tags).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tuner.study.readers import yaml_problem

MAX_FILE_BYTES = 64 * 1024
MAX_DEPTH = 32
MAX_NODES = 100_000
MAX_INT_CHARS = 40
INT_LIMIT = 2**63


class YamlInputError(Exception):
    """A YAML file that cannot be used: `problem` (with the line where known) and `fix`."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}; {fix}")
        self.problem, self.fix = problem, fix


class _Refused(yaml.YAMLError):  # type: ignore[misc]  # PyYAML ships no stubs here
    """Raised inside the loader; carries the line (1-based) and the fix."""

    def __init__(self, line: int | None, problem: str, fix: str):
        super().__init__(problem)
        self.line, self.problem, self.fix = line, problem, fix


def _line(node: Any) -> int | None:
    mark = getattr(node, "start_mark", None)
    return mark.line + 1 if mark is not None else None


class _BoundedLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no stubs here
    """SafeLoader with a nesting bound, an alias-expansion bound, bounded integers and unique keys."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(
                    mark.line + 1,
                    f"nested deeper than {MAX_DEPTH} levels",
                    "a study file nests a few levels; flatten it",
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int | None] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                try:
                    hash(key)
                except TypeError:
                    continue  # SafeLoader reports an unhashable key itself
                if key in first:
                    raise _Refused(
                        _line(key_node),
                        f"key {key!r} appears twice (first on line {first[key]})",
                        "keep one of them",
                    )
                first[key] = _line(key_node)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> int:
        text = str(self.construct_scalar(node))
        if len(text.replace("_", "")) > MAX_INT_CHARS:
            raise _Refused(_line(node), f"integer of {len(text)} characters", f"use a value below 2^63 ({INT_LIMIT})")
        value = int(super().construct_yaml_int(node))
        if abs(value) >= INT_LIMIT:
            raise _Refused(_line(node), f"integer {value} is out of range", f"use a value below 2^63 ({INT_LIMIT})")
        return value


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def _check_expansion(root: Any) -> None:
    """Refuse a node graph whose alias-expanded size exceeds MAX_NODES, or that contains itself."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise _Refused(_line(node), "an alias refers to the collection that contains it", "remove the alias")
        open_.add(key)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                n += size(child)
                if n > MAX_NODES:
                    break
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                n += size(k) + size(v)
                if n > MAX_NODES:
                    break
        open_.discard(key)
        if n > MAX_NODES:
            raise _Refused(
                _line(root),
                f"more than {MAX_NODES} values once aliases (*name) are expanded",
                "write the values out; a study file holds a few hundred",
            )
        sizes[key] = n
        return n

    size(root)


def parse_yaml(text: str) -> Any:
    """The document in `text` (bounded and strict as the module says). Raises YamlInputError."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)
    except _Refused as exc:
        at = f"line {exc.line}: " if exc.line is not None else ""
        raise YamlInputError(f"{at}{exc.problem}", exc.fix) from None
    except yaml.YAMLError as exc:
        raise YamlInputError(yaml_problem(exc), "fix the syntax") from None
    except RecursionError:  # a bound above should make this unreachable; one line all the same
        raise YamlInputError(f"nested deeper than {MAX_DEPTH} levels", "flatten the file") from None


def read_yaml(path: str | Path) -> Any:
    """Read and parse a YAML file: size-capped, UTF-8, bounded. Raises YamlInputError (FileNotFoundError and
    the like too, as one problem)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except PermissionError:
        raise YamlInputError("cannot be read (permission denied)", "check the file's permissions") from None
    except IsADirectoryError:
        raise YamlInputError("is a folder", "pass a YAML file") from None
    except OSError as exc:
        raise YamlInputError(f"cannot be read ({exc.strerror or exc})", "check the path") from None
    if len(raw) > MAX_FILE_BYTES:
        raise YamlInputError(
            f"larger than {MAX_FILE_BYTES // 1024} KiB, the limit for study and preset files",
            "these files hold a few KiB; check that this is the right file",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise YamlInputError("not UTF-8 text", "save the file as UTF-8") from None
    return parse_yaml(text)
