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
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.corpus import (
    CACHE_FORMAT,
    DEFAULT_MAX_BYTES,
    Corpus,
    DataError,
    DataSource,
    corpus_hash,
    name_fraction,
    read_documents,
    split_documents,
)
from model.fileio import atomic_write, atomic_write_text, file_lock

__all__ = [  # the corpus names are re-exported: callers use model.data for the whole pipeline
    "DEFAULT_MAX_BYTES",
    "EOT_TOKEN",
    "MIN_VOCAB_SIZE",
    "DataError",
    "DataRepeatWarning",
    "DataSource",
    "TokenData",
    "encode_documents",
    "name_fraction",
    "open_token_data",
    "prepare_data",
    "split_documents",
    "token_dtype",
    "token_counts",
    "train_tokenizer",
    "unigram_val_loss",
]

log = logging.getLogger(__name__)

Progress = Callable[[str], None] | None
EOT_TOKEN = "<|endoftext|>"
# 256 byte tokens + the end-of-text token: the smallest vocabulary a byte-level BPE tokenizer can have.
MIN_VOCAB_SIZE = 257


class DataRepeatWarning(UserWarning):
    """A training run asked for more tokens than the training split holds, so it sees some text more than once."""


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
        return {
            "vocab_size": self.vocab_size,
            "corpus_hash": self.corpus_hash,
            "n_train_tokens": self.n_train_tokens,
            "n_val_tokens": self.n_val_tokens,
            "n_train_docs": self.n_train_docs,
            "n_val_docs": self.n_val_docs,
            "n_learned_tokens": self.n_learned_tokens,
            "n_bytes": self.n_bytes,
            "skipped_files": self.skipped_files,
            "cache_path": self.cache_path,
        }

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
        raise DataError(
            f"data cache: {entry} is not a complete cache entry (no meta.json); delete it and prepare the data again"
        )
    meta = json.loads(meta_file.read_text())
    train = np.load(entry / "train.npy", mmap_mode="r")
    val = np.load(entry / "val.npy", mmap_mode="r")
    if train.shape[0] != meta["n_train_tokens"] or val.shape[0] != meta["n_val_tokens"]:
        raise DataError(
            f"data cache: {entry} is inconsistent (array lengths differ from meta.json); delete it and "
            "prepare the data again"
        )
    return TokenData(
        train=train,
        val=val,
        vocab_size=meta["vocab_size"],
        tokenizer_path=str(entry / "tokenizer.json"),
        corpus_hash=meta["corpus_hash"],
        eot_id=meta["eot_id"],
        n_learned_tokens=meta["n_learned_tokens"],
        n_train_docs=meta["n_train_docs"],
        n_val_docs=meta["n_val_docs"],
        n_bytes=meta["n_bytes"],
        skipped_files=meta["skipped_files"],
        cache_path=str(entry),
        from_cache=True,
        prepare_time_s=prepare_time_s,
    )


# --- preparation -----------------------------------------------------------------------------------------------------


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id 0..vocab_size-1 fits in 16 bits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def prepare_data(
    source: DataSource, vocab_size: int, cache_dir: str | os.PathLike, *, progress: Progress = None
) -> TokenData:
    """Read, split, tokenise and cache `source` for a `vocab_size`-id model; return memory-mapped token arrays.

    A cache hit (same text, vocabulary size and split) only reads and hashes the text (~0.1-0.2 s for 10 MiB) and
    opens the arrays. `progress(str)` receives a few status lines (also logged at INFO on `model.data`).
    Raises DataError when the source is missing or empty, or `vocab_size` < 257.
    """
    t0 = time.perf_counter()
    say = _reporter(progress)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise DataError(
            f"vocab_size: {vocab_size!r} is too small for a byte-level BPE tokenizer (allowed: >= "
            f"{MIN_VOCAB_SIZE} = 256 byte tokens + end-of-text)"
        )
    source.check()
    corpus = read_documents(source)
    if not corpus.docs:
        where = source.path if source.kind == "files" else source.describe()
        raise DataError(
            f"data: no readable UTF-8 text in {where} ({corpus.skipped} binary or undecodable files "
            "skipped); point data.path at text files"
        )
    digest = corpus_hash(corpus.docs)
    cache_root = Path(cache_dir).expanduser()
    cache_root.mkdir(parents=True, exist_ok=True)
    key = f"{digest[:20]}-v{vocab_size}-val{source.val_fraction:g}"
    entry = cache_root / key
    if (entry / "meta.json").is_file():
        say(f"data: cache hit {entry}")
        return open_token_data(entry, prepare_time_s=time.perf_counter() - t0)
    lock = cache_root / f"{key}.lock"
    with file_lock(lock, on_wait=lambda: say(f"data: waiting for another process preparing the same data ({lock})")):
        if (entry / "meta.json").is_file():  # another process finished it while we waited
            say(f"data: cache hit {entry} (prepared by another process)")
            return open_token_data(entry, prepare_time_s=time.perf_counter() - t0)
        _build_entry(entry, corpus, digest, vocab_size, source, say)
    data = open_token_data(entry, prepare_time_s=time.perf_counter() - t0)
    data = dataclasses.replace(data, from_cache=False)
    say(f"data: prepared {data.n_train_tokens} train + {data.n_val_tokens} val tokens in {data.prepare_time_s:.1f} s")
    return data


def _build_entry(
    entry: Path, corpus: Corpus, corpus_hash: str, vocab_size: int, source: DataSource, say: Callable[[str], None]
) -> None:
    train_docs, val_docs, n_train_docs, n_val_docs = split_documents(corpus.docs, source.val_fraction)
    say(
        f"data: {len(corpus.docs)} documents ({corpus.n_bytes} bytes, {corpus.skipped} skipped): "
        f"{n_train_docs} train / {n_val_docs} validation; training a {vocab_size}-token BPE tokenizer"
    )
    tokenizer, n_learned = train_tokenizer(train_docs, vocab_size)
    if n_learned < vocab_size:
        log.warning(
            "data: the training text yields only %d distinct BPE tokens; ids %d..%d are unused padding "
            "(raise data.max_bytes to learn a full vocabulary)",
            n_learned,
            n_learned,
            vocab_size - 1,
        )
    eot_id = tokenizer.token_to_id(EOT_TOKEN)
    entry.mkdir(parents=True, exist_ok=True)
    atomic_write_text(entry / "tokenizer.json", tokenizer.to_str())
    dtype = token_dtype(vocab_size)
    counts = {}
    for name, docs in (("train", train_docs), ("val", val_docs)):
        ids = encode_documents(tokenizer, docs, eot_id, dtype)
        atomic_write(entry / f"{name}.npy", functools.partial(np.save, arr=ids), binary=True)
        counts[name] = int(ids.shape[0])
    meta = {
        "format": CACHE_FORMAT,
        "vocab_size": vocab_size,
        "corpus_hash": corpus_hash,
        "eot_id": eot_id,
        "n_learned_tokens": n_learned,
        "n_train_tokens": counts["train"],
        "n_val_tokens": counts["val"],
        "n_train_docs": n_train_docs,
        "n_val_docs": n_val_docs,
        "n_bytes": corpus.n_bytes,
        "skipped_files": corpus.skipped,
        "source": source.to_dict(),
        "dtype": dtype.name,
    }
    # meta.json last: its presence marks the entry complete.
    atomic_write_text(entry / "meta.json", json.dumps(meta, indent=1))


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
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TOKEN],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
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
        for enc in encode(texts[start : start + chunk], add_special_tokens=False):
            if parts:
                parts.append(eot)
            parts.append(np.asarray(enc.ids, dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


# --- small helpers: progress -----------------------------------------------------------------------------------------


def _reporter(progress: Progress) -> Callable[[str], None]:
    def say(message: str) -> None:
        log.info(message)
        if progress is not None:
            progress(message)

    return say


def token_counts(tokens: np.ndarray, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
    """Occurrences of each id in the 1-D token array `tokens` (any integer dtype) -> int64 [V].

    Counted `chunk` tokens at a time, so a memory-mapped corpus of any size needs only chunk * 8 bytes at once."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(tokens), chunk):
        counts += np.bincount(np.asarray(tokens[start : start + chunk]), minlength=vocab_size)[:vocab_size]
    return counts


def unigram_val_loss(data: TokenData, n_seq: int, eval_tokens: int) -> float:
    """Cross-entropy (nats per token) on validation of the unigram model of the training split: the floor any
    language model must beat to have learned more than token frequencies.

    Counts are add-one smoothed over the whole vocabulary. Scored on the same targets as `model.train.evaluate`
    with windows of `n_seq`: val[1 : 1 + n_windows * n_seq], n_windows = min(ceil(eval_tokens / n_seq),
    (n_val_tokens - 1) // n_seq).
    """
    counts = token_counts(data.train, data.vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    n_windows = min(-(-eval_tokens // n_seq), (data.n_val_tokens - 1) // n_seq)
    targets = np.asarray(data.val[1 : 1 + n_windows * n_seq])
    return float(-log_p[targets].mean())
