"""Training text -> byte-level BPE tokenizer -> memory-mapped token arrays, prepared once and cached on disk.

Imports no torch (the CLI validates a study's `data:` section with `DataSource.check()` in well under a second).

Pipeline of `prepare_data(source, vocab_size, cache_dir)`:
1. read documents from the source (the Python standard library's `.py` files, a local file or folder, or a Hugging
   Face dataset), in a fixed order (sorted by relative path), capped at `source.max_bytes` bytes of text;
2. split them BY DOCUMENT into train and validation (a hash of each document's relative path decides), so no
   validation text is ever seen in training, not even by the tokenizer;
3. train a byte-level BPE tokenizer of exactly `vocab_size` ids on the training documents;
4. encode both sides with an end-of-text token between documents and save them as `.npy` (uint16 ids when
   `vocab_size <= 65536`, else uint32), opened memory-mapped.
The result is cached under `cache_dir/<corpus hash>-v<vocab>-val<fraction>/`; a later call with the same text,
vocabulary size and split reads it back without retraining. Two processes preparing the same entry at once are
serialised by a lock file, and every file is written to a temporary name and moved into place with `os.replace`,
so a reader never sees a half-written array.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

import numpy as np

log = logging.getLogger(__name__)

SourceKind = Literal["stdlib", "files", "hf"]
Progress = Callable[[str], None] | None

# 10 MiB of the standard library's sources (of ~31 MB, Python 3.11): the smallest round size whose 90% training
# side fills a GPT-2-sized 50257-token vocabulary with learned merges (it could learn 54095; 8 MB only ~48k), giving
# ~2.3 M training + ~0.25 M validation tokens. First prepare on 2 cores: ~5-6 s idle (BPE + encoding took 3.2 s at
# 8 MB and 5.2 s at 12 MB; a whole prepare 10.2 s at 16 MiB), 22-28 s measured with 8-10 other processes competing
# for the cores. Studies with large token budgets should raise it (or use their own files) so that training does not
# repeat the text many times.
DEFAULT_MAX_BYTES = 10 * 2**20
DEFAULT_VAL_FRACTION = 0.1
EOT_TOKEN = "<|endoftext|>"
# 256 byte tokens + the end-of-text token: the smallest vocabulary a byte-level BPE tokenizer can have.
MIN_VOCAB_SIZE = 257
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

    kind: "stdlib" (this Python's standard-library `.py` sources, always available offline), "files" (`path`: one
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
            object.__setattr__(self, "path", os.fspath(self.path))  # a Path is fine; stored as str (JSON-safe)
        if self.kind not in ("stdlib", "files", "hf"):
            raise DataError(f"data.kind: {self.kind!r} is not one of 'stdlib', 'files', 'hf'")
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < 1024:
            raise DataError(f"data.max_bytes: {self.max_bytes!r} is out of range (allowed: an integer >= 1024)")
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, (int, float)) \
                or not 0.0 < self.val_fraction < 0.5:
            raise DataError(f"data.val_fraction: {self.val_fraction!r} is out of range (allowed: 0 < x < 0.5)")
        if self.kind == "files" and not self.path:
            raise DataError("data.path: missing; kind 'files' needs the path of a text file or a folder of text files")
        if self.kind == "hf" and not self.hf_name:
            raise DataError("data.hf_name: missing; kind 'hf' needs a Hugging Face dataset name, e.g. 'wikitext'")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "data") -> "DataSource":
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
        if self.kind == "files":
            return f"files under {self.path}, first {self.max_bytes} bytes"
        name = f"{self.hf_name}/{self.hf_config or '-'}:{self.hf_split}"
        return f"Hugging Face dataset {name}, first {self.max_bytes} bytes"

    def check(self) -> None:
        """Cheap validation without reading the text or importing torch: raise DataError naming the path and the fix."""
        if self.kind == "stdlib":
            root = _stdlib_root()
            if not (root / "os.py").is_file():
                raise DataError(
                    f"data: the standard library at {root} has no .py sources (this Python ships compiled files "
                    "only); use kind: files with a folder of text files instead"
                )
        elif self.kind == "files":
            p = Path(self.path).expanduser()
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
class _Corpus:
    docs: list[tuple[str, str]]  # (name, text), in source order
    n_bytes: int
    skipped: int  # files skipped as binary or not UTF-8


def _read_documents(source: DataSource) -> _Corpus:
    if source.kind == "hf":
        return _read_hf(source)
    if source.kind == "stdlib":
        root, suffix = _stdlib_root(), ".py"
        files = list(_walk_files(root, suffix))
    else:
        root, suffix = Path(source.path).expanduser(), None
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
    return _Corpus(docs, n_bytes, skipped)


def _read_hf(source: DataSource) -> _Corpus:
    """Stream records of a Hugging Face dataset until `max_bytes` (not testable offline: needs the network)."""
    try:
        import datasets  # optional extra
    except ImportError as exc:
        raise DataError(f"data.kind: 'hf' needs the optional Hugging Face 'datasets' package; run: {_HF_INSTALL}") \
            from exc
    try:
        stream = datasets.load_dataset(source.hf_name, source.hf_config, split=source.hf_split, streaming=True)
    except Exception as exc:  # network, unknown name, unknown split: one message with the fix
        raise DataError(f"data.hf_name: cannot load {source.hf_name!r} (config {source.hf_config!r}, split "
                        f"{source.hf_split!r}): {exc}; check the name and your network connection") from exc
    docs, n_bytes = [], 0
    for i, record in enumerate(stream):
        if source.hf_text_field not in record:
            raise DataError(f"data.hf_text_field: {source.hf_text_field!r} is not a field of {source.hf_name} "
                            f"(fields: {', '.join(record)})")
        text = record[source.hf_text_field] or ""
        raw = text.encode("utf-8")
        if n_bytes + len(raw) > source.max_bytes:
            break
        if text.strip():
            docs.append((f"{source.hf_split}/{i:09d}", text))
            n_bytes += len(raw)
    return _Corpus(docs, n_bytes, 0)


def _corpus_hash(docs: list[tuple[str, str]]) -> str:
    """sha256 over every document's name and text (names matter: they decide the split)."""
    h = hashlib.sha256(f"phase1-corpus-v{CACHE_FORMAT}".encode())
    for name, text in docs:
        raw = text.encode("utf-8")
        h.update(f"\0{name}\0{len(raw)}\0".encode())
        h.update(raw)
    return h.hexdigest()


# --- the split -------------------------------------------------------------------------------------------------------


def _name_fraction(name: str) -> float:
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
            raise DataError(f"data: the only document ({name}) has a single line, which cannot be split into "
                            "train and validation; supply more text")
        n_val = max(1, int(len(lines) * val_fraction))
        return ["".join(lines[:-n_val])], ["".join(lines[-n_val:])], 1, 1
    sizes = {name: len(text.encode("utf-8")) for name, text in docs}
    target = val_fraction * sum(sizes.values())
    ranked = sorted(docs, key=lambda d: (_name_fraction(d[0]), d[0]))
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


@dataclass(frozen=True, eq=False)
class TokenData:
    """Prepared token arrays. `train`, `val`: read-only memory-mapped 1-D arrays of token ids (uint16 or uint32),
    documents separated by `eot_id`. Pickling a prepared entry sends only the cache path; unpickling re-opens the
    memory maps (as `from_cache=True`), so a child process gets the data in milliseconds."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    tokenizer_path: str
    corpus_hash: str
    eot_id: int
    n_learned_tokens: int  # ids the BPE training produced (<= vocab_size; the rest are unused padding ids)
    n_train_docs: int
    n_val_docs: int
    n_bytes: int  # UTF-8 bytes of text read
    skipped_files: int  # binary / non-UTF-8 files skipped
    cache_path: str
    from_cache: bool
    prepare_time_s: float

    @property
    def n_train_tokens(self) -> int:
        return int(self.train.shape[0])

    @property
    def n_val_tokens(self) -> int:
        return int(self.val.shape[0])

    def summary(self) -> dict[str, Any]:
        """JSON-safe description (for trial attributes and logs)."""
        return {"vocab_size": self.vocab_size, "corpus_hash": self.corpus_hash, "n_train_tokens": self.n_train_tokens,
                "n_val_tokens": self.n_val_tokens, "n_train_docs": self.n_train_docs, "n_val_docs": self.n_val_docs,
                "n_learned_tokens": self.n_learned_tokens, "n_bytes": self.n_bytes,
                "skipped_files": self.skipped_files, "cache_path": self.cache_path}

    def __reduce__(self):
        if self.cache_path and isinstance(self.train, np.memmap):  # a cache entry: send the path, re-open the maps
            return (open_token_data, (self.cache_path,))
        # built in memory (e.g. synthetic ids for memory probes): pickle the arrays themselves
        return (TokenData, tuple(getattr(self, f.name) for f in dataclasses.fields(self)))


def open_token_data(cache_path: str | os.PathLike, *, prepare_time_s: float = 0.0) -> TokenData:
    """Open a complete cache entry (a folder written by `prepare_data`) with memory-mapped arrays."""
    entry = Path(cache_path)
    meta_file = entry / "meta.json"
    if not meta_file.is_file():
        raise DataError(f"data cache: {entry} is not a complete cache entry (no meta.json); delete it and prepare "
                        "the data again")
    meta = json.loads(meta_file.read_text())
    train = np.load(entry / "train.npy", mmap_mode="r")
    val = np.load(entry / "val.npy", mmap_mode="r")
    if train.shape[0] != meta["n_train_tokens"] or val.shape[0] != meta["n_val_tokens"]:
        raise DataError(f"data cache: {entry} is inconsistent (array lengths differ from meta.json); delete it and "
                        "prepare the data again")
    return TokenData(
        train=train, val=val, vocab_size=meta["vocab_size"], tokenizer_path=str(entry / "tokenizer.json"),
        corpus_hash=meta["corpus_hash"], eot_id=meta["eot_id"], n_learned_tokens=meta["n_learned_tokens"],
        n_train_docs=meta["n_train_docs"], n_val_docs=meta["n_val_docs"], n_bytes=meta["n_bytes"],
        skipped_files=meta["skipped_files"], cache_path=str(entry), from_cache=True, prepare_time_s=prepare_time_s,
    )


# --- preparation -----------------------------------------------------------------------------------------------------


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id 0..vocab_size-1 fits in 16 bits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def prepare_data(source: DataSource, vocab_size: int, cache_dir: str | os.PathLike, *,
                 progress: Progress = None) -> TokenData:
    """Read, split, tokenise and cache `source` for a `vocab_size`-id model; return memory-mapped token arrays.

    A cache hit (same text, vocabulary size and split) only reads and hashes the text (~0.1-0.2 s for 10 MiB) and
    opens the arrays. `progress(str)` receives a few status lines (also logged at INFO on `model.data`).
    Raises DataError when the source is missing or empty, or `vocab_size` < 257.
    """
    t0 = time.perf_counter()
    say = _reporter(progress)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise DataError(f"vocab_size: {vocab_size!r} is too small for a byte-level BPE tokenizer (allowed: >= "
                        f"{MIN_VOCAB_SIZE} = 256 byte tokens + end-of-text)")
    source.check()
    corpus = _read_documents(source)
    if not corpus.docs:
        where = source.path if source.kind == "files" else source.describe()
        raise DataError(f"data: no readable UTF-8 text in {where} ({corpus.skipped} binary or undecodable files "
                        "skipped); point data.path at text files")
    corpus_hash = _corpus_hash(corpus.docs)
    cache_root = Path(cache_dir).expanduser()
    cache_root.mkdir(parents=True, exist_ok=True)
    key = f"{corpus_hash[:20]}-v{vocab_size}-val{source.val_fraction:g}"
    entry = cache_root / key
    if (entry / "meta.json").is_file():
        say(f"data: cache hit {entry}")
        return open_token_data(entry, prepare_time_s=time.perf_counter() - t0)
    with _FileLock(cache_root / f"{key}.lock", say):
        if (entry / "meta.json").is_file():  # another process finished it while we waited
            say(f"data: cache hit {entry} (prepared by another process)")
            return open_token_data(entry, prepare_time_s=time.perf_counter() - t0)
        _build_entry(entry, corpus, corpus_hash, vocab_size, source, say)
    data = open_token_data(entry, prepare_time_s=time.perf_counter() - t0)
    data = dataclasses.replace(data, from_cache=False)
    say(f"data: prepared {data.n_train_tokens} train + {data.n_val_tokens} val tokens in {data.prepare_time_s:.1f} s")
    return data


def _build_entry(entry: Path, corpus: _Corpus, corpus_hash: str, vocab_size: int, source: DataSource,
                 say: Callable[[str], None]) -> None:
    train_docs, val_docs, n_train_docs, n_val_docs = split_documents(corpus.docs, source.val_fraction)
    say(f"data: {len(corpus.docs)} documents ({corpus.n_bytes} bytes, {corpus.skipped} skipped): "
        f"{n_train_docs} train / {n_val_docs} validation; training a {vocab_size}-token BPE tokenizer")
    tokenizer, n_learned = train_tokenizer(train_docs, vocab_size)
    if n_learned < vocab_size:
        log.warning("data: the training text yields only %d distinct BPE tokens; ids %d..%d are unused padding "
                    "(raise data.max_bytes to learn a full vocabulary)", n_learned, n_learned, vocab_size - 1)
    eot_id = tokenizer.token_to_id(EOT_TOKEN)
    entry.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(entry / "tokenizer.json", tokenizer.to_str())
    dtype = token_dtype(vocab_size)
    counts = {}
    for name, docs in (("train", train_docs), ("val", val_docs)):
        ids = encode_documents(tokenizer, docs, eot_id, dtype)
        _atomic_save_npy(entry / f"{name}.npy", ids)
        counts[name] = int(ids.shape[0])
    meta = {"format": CACHE_FORMAT, "vocab_size": vocab_size, "corpus_hash": corpus_hash, "eot_id": eot_id,
            "n_learned_tokens": n_learned, "n_train_tokens": counts["train"], "n_val_tokens": counts["val"],
            "n_train_docs": n_train_docs, "n_val_docs": n_val_docs, "n_bytes": corpus.n_bytes,
            "skipped_files": corpus.skipped, "source": source.to_dict(), "dtype": dtype.name}
    # meta.json last: its presence marks the entry complete.
    _atomic_write_text(entry / "meta.json", json.dumps(meta, indent=1))


def train_tokenizer(texts: list[str], vocab_size: int):
    """Train a byte-level BPE tokenizer with exactly `vocab_size` ids; return (tokenizer, ids actually learned).

    Id 0 is the end-of-text token, ids 1..256 the bytes, then merges. When the text has too few distinct
    byte pairs to learn `vocab_size - 257` merges, the remaining ids are filled with reserved `<|unused_N|>` special
    tokens that never occur in the data (the model learns to give them ~0 probability), so the vocabulary, and the
    model's embedding, still have exactly `vocab_size` rows; a warning names the shortfall.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    n_learned = tok.get_vocab_size()
    if n_learned < vocab_size:
        tok.add_special_tokens([f"<|unused_{i}|>" for i in range(vocab_size - n_learned)])
    if tok.get_vocab_size() != vocab_size:  # an invariant of the tokenizers library we rely on
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} ids, expected exactly {vocab_size}")
    return tok, n_learned


def encode_documents(tokenizer, texts: list[str], eot_id: int, dtype: np.dtype, chunk: int = 64) -> np.ndarray:
    """Token ids of `texts` joined by `eot_id` -> 1-D array of `dtype` (encoded in chunks to bound memory)."""
    parts: list[np.ndarray] = []
    eot = np.array([eot_id], dtype=dtype)
    # encode_batch_fast (tokenizers >= 0.20) skips character offsets we do not use: same ids, ~20% faster
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    for start in range(0, len(texts), chunk):
        for enc in encode(texts[start:start + chunk], add_special_tokens=False):
            if parts:
                parts.append(eot)
            parts.append(np.asarray(enc.ids, dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


# --- small helpers: atomic writes, the lock, progress ----------------------------------------------------------------


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _FileLock:
    """An exclusive advisory lock (fcntl.flock) on a lock file; released when the process dies, so never stale.
    On a platform without fcntl it degrades to no lock: the atomic writes alone still keep every file whole."""

    def __init__(self, path: Path, say: Callable[[str], None]):
        self.path, self.say, self.fh = path, say, None

    def __enter__(self) -> "_FileLock":
        try:
            import fcntl
        except ImportError:  # Windows: rely on atomic writes only
            return self
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.say(f"data: waiting for another process preparing the same data ({self.path})")
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            import fcntl

            fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
            self.fh.close()


def _reporter(progress: Progress) -> Callable[[str], None]:
    def say(message: str) -> None:
        log.info(message)
        if progress is not None:
            progress(message)

    return say
