"""Where training text comes from: the `DataSource` setting, reading its documents in a fixed order, and the
train/validation split by document. Imports no torch (the CLI validates a study's `data:` section in well under a
second); `model.data` turns the documents into cached token arrays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import sysconfig
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

SourceKind = Literal["stdlib", "python", "files", "hf"]

# 10 MiB of the standard library's sources (of ~31 MB, Python 3.11): the smallest round size whose 90% training
# side fills a GPT-2-sized 50257-token vocabulary with learned merges (it could learn 54095; 8 MB only ~48k), giving
# ~2.3 M training + ~0.25 M validation tokens. First prepare on 2 cores: ~5-6 s idle (BPE + encoding took 3.2 s at
# 8 MB and 5.2 s at 12 MB; a whole prepare 10.2 s at 16 MiB), 22-28 s measured with 8-10 other processes competing
# for the cores. Studies with large token budgets should raise it (or use their own files) so that training does not
# repeat the text many times.
DEFAULT_MAX_BYTES = 10 * 2**20
DEFAULT_VAL_FRACTION = 0.1
# Bump when the on-disk layout or the tokenisation changes, so stale cache entries are not reused.
CACHE_FORMAT = 1
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_HF_INSTALL = "pip install 'phase1-tuner[hf]'"


class DataError(ValueError):
    """The training data cannot be found or read. The message names the path or setting and the fix."""


# --- the source ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSource:
    """Where the training text comes from.

    kind: "stdlib" (this Python's standard-library `.py` sources, always available offline; ~30 MiB, ~7 M tokens
    at V = 50257), "python" (the standard library, then every installed package's `.py` sources under this
    Python's site-packages: hundreds of MiB where torch and friends are installed, for budgets the standard
    library alone would repeat), "files" (`path`: one
    text file or a folder searched recursively; hidden folders, binary and non-UTF-8 files are skipped and counted),
    or "hf" (a Hugging Face dataset streamed through the optional `datasets` package: `hf_name`, `hf_config`,
    `hf_split`, `hf_text_field`).
    max_bytes: cap on the UTF-8 text read, in bytes; documents are taken in sorted order until the cap and the last
        one is cut at a line boundary.
    val_fraction: the share of documents held out for validation, chosen by a hash of each document's name.
    """

    kind: SourceKind = "stdlib"
    path: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    val_fraction: float = DEFAULT_VAL_FRACTION
    hf_name: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    hf_text_field: str = "text"

    def __post_init__(self) -> None:
        if self.path is not None and not isinstance(self.path, str):
            # a Path is fine (callers pass one despite the annotation); stored as str (JSON-safe)
            object.__setattr__(self, "path", os.fspath(self.path))  # type: ignore[unreachable]
        if self.kind not in ("stdlib", "python", "files", "hf"):
            raise DataError(f"data.kind: {self.kind!r} is not one of 'stdlib', 'python', 'files', 'hf'")
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < 1024:
            raise DataError(f"data.max_bytes: {self.max_bytes!r} is out of range (allowed: an integer >= 1024)")
        if (
            isinstance(self.val_fraction, bool)
            or not isinstance(self.val_fraction, (int, float))
            or not 0.0 < self.val_fraction < 0.5
        ):
            raise DataError(f"data.val_fraction: {self.val_fraction!r} is out of range (allowed: 0 < x < 0.5)")
        if self.kind == "files" and not self.path:
            raise DataError("data.path: missing; kind 'files' needs the path of a text file or a folder of text files")
        if self.kind == "hf" and not self.hf_name:
            raise DataError("data.hf_name: missing; kind 'hf' needs a Hugging Face dataset name, e.g. 'wikitext'")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "data") -> DataSource:
        """Build from a mapping (a study file's `data:` section); unknown keys are a DataError naming the key."""
        if not isinstance(data, Mapping):
            raise DataError(f"{where}: expected a mapping with 'kind' and its settings, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise DataError(f"{where}.{key}: unknown data setting (known: {', '.join(sorted(known))})")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        if self.kind == "stdlib":
            return f"Python standard library sources ({_stdlib_root()}), first {self.max_bytes} bytes"
        if self.kind == "python":
            return (
                f"Python sources: the standard library ({_stdlib_root()}) then site-packages "
                f"({', '.join(str(p) for p in _site_roots())}), first {self.max_bytes} bytes"
            )
        if self.kind == "files":
            return f"files under {self.path}, first {self.max_bytes} bytes"
        name = f"{self.hf_name}/{self.hf_config or '-'}:{self.hf_split}"
        return f"Hugging Face dataset {name}, first {self.max_bytes} bytes"

    def _files_path(self) -> str:
        """`path` of a kind-'files' source (__post_init__ made sure it is set)."""
        if self.path is None:
            raise DataError("data.path: missing; kind 'files' needs the path of a text file or a folder of text files")
        return self.path

    def check(self) -> None:
        """Cheap validation without reading the text or importing torch: raise DataError naming the path and the fix."""
        if self.kind in ("stdlib", "python"):
            root = _stdlib_root()
            if not (root / "os.py").is_file():
                raise DataError(
                    f"data: the standard library at {root} has no .py sources (this Python ships compiled files "
                    "only); use kind: files with a folder of text files instead"
                )
        elif self.kind == "files":
            p = Path(self._files_path()).expanduser()
            if not p.exists():
                raise DataError(f"data.path: {p} does not exist; point it at a text file or a folder of text files")
            if p.is_dir() and next(_walk_files(p), None) is None:
                raise DataError(f"data.path: folder {p} contains no files; put text files in it or choose another path")
            if not p.is_dir() and not p.is_file():
                raise DataError(f"data.path: {p} is neither a file nor a folder; point it at text files")
        elif importlib.util.find_spec("datasets") is None:
            raise DataError(f"data.kind: 'hf' needs the optional Hugging Face 'datasets' package; run: {_HF_INSTALL}")


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _site_roots() -> list[Path]:
    """This Python's package folders (purelib, then platlib when it differs), those that exist."""
    paths = sysconfig.get_paths()
    roots = [Path(paths["purelib"])]
    if Path(paths["platlib"]) != roots[0]:
        roots.append(Path(paths["platlib"]))
    return [r for r in roots if r.is_dir()]


def _walk_files(root: Path, suffix: str | None = None) -> Iterator[tuple[str, Path]]:
    """(relative POSIX path, path) of every regular file under `root`, sorted by relative path, hidden and package
    folders (`site-packages`, `__pycache__`, `.git`, ...) skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if name.startswith(".") or (suffix and not name.endswith(suffix)):
                continue
            full = Path(dirpath) / name
            if full.is_file():
                yield full.relative_to(root).as_posix(), full


# --- reading documents -----------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    docs: list[tuple[str, str]]  # (name, text), in source order
    n_bytes: int
    skipped: int  # files skipped as binary or not UTF-8


def read_documents(source: DataSource) -> Corpus:
    if source.kind == "hf":
        return _read_hf(source)
    if source.kind == "stdlib":
        files = list(_walk_files(_stdlib_root(), ".py"))
    elif source.kind == "python":
        # the standard library first, then the packages (the numbered prefixes keep that order through the sort
        # below and the names unique across roots)
        files = [(f"0-stdlib/{rel}", p) for rel, p in _walk_files(_stdlib_root(), ".py")]
        for i, root in enumerate(_site_roots(), start=1):
            files += [(f"{i}-site/{rel}", p) for rel, p in _walk_files(root, ".py")]
    else:
        root = Path(source._files_path()).expanduser()
        files = list(_walk_files(root)) if root.is_dir() else [(root.name, root)]
    # os.walk yields folder by folder; sort the whole list so the order is by relative path, as documented.
    files.sort(key=lambda item: item[0])
    docs, n_bytes, skipped = [], 0, 0
    for rel, full in files:
        remaining = source.max_bytes - n_bytes
        if remaining <= 0:
            break
        with open(full, "rb") as fh:
            raw = fh.read(remaining + 1)
        truncated = len(raw) > remaining
        if truncated:  # cut at the last line end so no UTF-8 sequence or line is split
            raw = raw[: raw.rfind(b"\n", 0, remaining) + 1]
        if b"\x00" in raw:
            skipped += 1
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped += 1
            continue
        if text.strip():
            docs.append((rel, text))
            n_bytes += len(raw)
        if truncated:
            break
    return Corpus(docs, n_bytes, skipped)


def _read_hf(source: DataSource) -> Corpus:
    """Stream records of a Hugging Face dataset until `max_bytes` (not testable offline: needs the network)."""
    try:
        import datasets  # optional extra
    except ImportError as exc:
        raise DataError(
            f"data.kind: 'hf' needs the optional Hugging Face 'datasets' package; run: {_HF_INSTALL}"
        ) from exc
    try:
        stream = datasets.load_dataset(source.hf_name, source.hf_config, split=source.hf_split, streaming=True)
    except Exception as exc:  # network, unknown name, unknown split: one message with the fix
        raise DataError(
            f"data.hf_name: cannot load {source.hf_name!r} (config {source.hf_config!r}, split "
            f"{source.hf_split!r}): {exc}; check the name and your network connection"
        ) from exc
    docs, n_bytes = [], 0
    for i, record in enumerate(stream):
        if source.hf_text_field not in record:
            raise DataError(
                f"data.hf_text_field: {source.hf_text_field!r} is not a field of {source.hf_name} "
                f"(fields: {', '.join(record)})"
            )
        text = record[source.hf_text_field] or ""
        raw = text.encode("utf-8")
        if n_bytes + len(raw) > source.max_bytes:
            break
        if text.strip():
            docs.append((f"{source.hf_split}/{i:09d}", text))
            n_bytes += len(raw)
    return Corpus(docs, n_bytes, 0)


def corpus_hash(docs: list[tuple[str, str]]) -> str:
    """sha256 over every document's name and text (names matter: they decide the split)."""
    h = hashlib.sha256(f"phase1-corpus-v{CACHE_FORMAT}".encode())
    for name, text in docs:
        raw = text.encode("utf-8")
        h.update(f"\0{name}\0{len(raw)}\0".encode())
        h.update(raw)
    return h.hexdigest()


# --- the split -------------------------------------------------------------------------------------------------------


def name_fraction(name: str) -> float:
    """A deterministic number in [0, 1) from a document's name (the same on every machine and Python run)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2**64


def split_documents(docs: list[tuple[str, str]], val_fraction: float) -> tuple[list[str], list[str], int, int]:
    """Split documents by name into (train texts, val texts, n_train_docs, n_val_docs); both sides non-empty.

    Documents are ranked by a hash of their name; validation takes them in that order until it holds
    `val_fraction` of the text's bytes, passing over any document that would push it past twice that (so one huge
    file cannot swallow the validation side); if nothing fits, the smallest document is taken. A byte target rather
    than a per-document coin flip keeps the validation set near its intended size on corpora of a few large files.
    The result depends only on the set of (name, text) pairs, not their order. A corpus of one document is cut at a
    line boundary instead: its last `val_fraction` of lines (at least one) becomes validation.
    """
    if not docs:
        raise DataError("data: no text documents were found; check data.path or data.kind")
    if len(docs) == 1:
        name, text = docs[0]
        lines = text.splitlines(keepends=True)
        if len(lines) < 2:
            raise DataError(
                f"data: the only document ({name}) has a single line, which cannot be split into "
                "train and validation; supply more text"
            )
        n_val = max(1, int(len(lines) * val_fraction))
        return ["".join(lines[:-n_val])], ["".join(lines[-n_val:])], 1, 1
    sizes = {name: len(text.encode("utf-8")) for name, text in docs}
    target = val_fraction * sum(sizes.values())
    ranked = sorted(docs, key=lambda d: (name_fraction(d[0]), d[0]))
    is_val = {name: False for name, _ in docs}
    val_bytes = 0
    for name, _ in ranked:
        if val_bytes >= target:
            break
        if val_bytes + sizes[name] <= 2 * target:
            is_val[name] = True
            val_bytes += sizes[name]
    if not val_bytes:  # every document is larger than twice the target: take the smallest (< half the text)
        is_val[min(docs, key=lambda d: (sizes[d[0]], d[0]))[0]] = True
    train = [text for name, text in docs if not is_val[name]]
    val = [text for name, text in docs if is_val[name]]
    return train, val, len(train), len(val)


# --- the result ------------------------------------------------------------------------------------------------------
