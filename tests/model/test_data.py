"""model.data: real text (the stdlib sources and a folder of files) -> tokenizer -> cached, memory-mapped arrays."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from model.data import (
    DEFAULT_MAX_BYTES,
    EOT_TOKEN,
    DataError,
    DataSource,
    name_fraction,
    prepare_data,
    split_documents,
)

SMALL = 300_000  # bytes of stdlib text: enough for a 512-token vocabulary, trains in well under a second
VOCAB = 512


@pytest.fixture(scope="module")
def stdlib_data(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return prepare_data(DataSource("stdlib", max_bytes=SMALL), VOCAB, cache), cache


def _text_folder(root: Path) -> Path:
    """A folder of real text (stdlib modules copied under nested names), one binary and one latin-1 file."""
    import sysconfig

    std = Path(sysconfig.get_paths()["stdlib"])
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(["textwrap.py", "string.py", "shlex.py", "glob.py", "fnmatch.py", "bisect.py",
                              "heapq.py", "keyword.py", "colorsys.py", "calendar.py", "difflib.py", "queue.py"]):
        sub = root / f"part{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"{name}.txt").write_text((std / name).read_text("utf-8"), "utf-8")
    (root / "blob.bin").write_bytes(bytes(range(256)) * 10)  # has NUL bytes -> binary
    (root / "latin.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1") * 5)  # not UTF-8
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("hidden folders are skipped\n")
    return root


# --- stdlib source ---------------------------------------------------------------------------------------------------


def test_stdlib_prepare_gives_valid_arrays(stdlib_data):
    data, _ = stdlib_data
    assert data.vocab_size == VOCAB
    assert data.train.dtype == np.uint16 and data.val.dtype == np.uint16
    assert isinstance(data.train, np.memmap) and isinstance(data.val, np.memmap)
    assert data.n_train_tokens > 20_000 and data.n_val_tokens > 1_000
    assert int(data.train.max()) < VOCAB and int(data.val.max()) < VOCAB
    assert 250_000 < data.n_bytes <= SMALL
    assert data.n_train_docs >= 1 and data.n_val_docs >= 1
    # documents are separated by the end-of-text token
    assert (np.asarray(data.train) == data.eot_id).sum() == data.n_train_docs - 1
    assert (np.asarray(data.val) == data.eot_id).sum() == data.n_val_docs - 1


def test_tokenizer_has_exact_vocab_and_round_trips(stdlib_data):
    data, _ = stdlib_data
    tok = Tokenizer.from_file(data.tokenizer_path)
    assert tok.get_vocab_size() == VOCAB
    assert tok.token_to_id(EOT_TOKEN) == data.eot_id
    assert data.n_learned_tokens == VOCAB  # 300 kB of Python fills 512 ids with learned merges
    first_doc = np.asarray(data.train[:2000])
    end = int(np.argmax(first_doc == data.eot_id)) or len(first_doc)
    text = tok.decode(first_doc[:end].tolist())
    assert "def " in text or "import " in text  # real Python source comes back


def test_vocab_too_large_for_corpus_is_padded_exactly(tmp_path):
    source = DataSource("stdlib", max_bytes=20_000)
    data = prepare_data(source, 20_000, tmp_path)
    tok = Tokenizer.from_file(data.tokenizer_path)
    assert tok.get_vocab_size() == 20_000 == data.vocab_size
    assert data.n_learned_tokens < 20_000
    # padding ids never occur in the data
    assert int(max(data.train.max(), data.val.max())) < data.n_learned_tokens


def test_vocab_below_byte_alphabet_rejected(tmp_path):
    with pytest.raises(DataError, match="vocab_size: 100 .* >= 257"):
        prepare_data(DataSource("stdlib", max_bytes=SMALL), 100, tmp_path)


def test_large_vocab_uses_uint32(tmp_path):
    data = prepare_data(DataSource("stdlib", max_bytes=20_000), 70_000, tmp_path)
    assert data.train.dtype == np.uint32 and data.vocab_size == 70_000


def test_cache_hit_does_not_retrain(stdlib_data):
    data, cache = stdlib_data
    tok_file = Path(data.tokenizer_path)
    mtimes = {p.name: p.stat().st_mtime_ns for p in tok_file.parent.iterdir()}
    t0 = time.perf_counter()
    again = prepare_data(DataSource("stdlib", max_bytes=SMALL), VOCAB, cache)
    hit_s = time.perf_counter() - t0
    assert again.from_cache and not data.from_cache
    assert again.cache_path == data.cache_path and again.corpus_hash == data.corpus_hash
    assert {p.name: p.stat().st_mtime_ns for p in tok_file.parent.iterdir()} == mtimes  # nothing rewritten
    np.testing.assert_array_equal(again.train, data.train)
    assert hit_s < max(0.5, data.prepare_time_s / 2), (hit_s, data.prepare_time_s)


def test_other_vocab_or_text_is_another_entry(stdlib_data):
    data, cache = stdlib_data
    other = prepare_data(DataSource("stdlib", max_bytes=SMALL // 2), VOCAB, cache)
    assert not other.from_cache and other.corpus_hash != data.corpus_hash
    assert other.cache_path != data.cache_path


def test_pickle_reopens_memory_maps(stdlib_data):
    data, _ = stdlib_data
    blob = pickle.dumps(data)
    assert len(blob) < 2000  # paths only, not the arrays
    back = pickle.loads(blob)
    assert isinstance(back.train, np.memmap)
    np.testing.assert_array_equal(back.val, data.val)
    # an in-memory TokenData (no cache entry) pickles its arrays
    mem = dataclasses.replace(data, train=np.arange(100, dtype=np.uint16), val=np.arange(50, dtype=np.uint16),
                              cache_path="")
    back = pickle.loads(pickle.dumps(mem))
    assert back.n_train_tokens == 100 and back.n_val_tokens == 50 and back.vocab_size == VOCAB


def test_stdlib_import_is_torch_free():
    code = "import sys, model.data; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the split -------------------------------------------------------------------------------------------------------


def test_split_is_by_document_and_deterministic():
    docs = [(f"dir/file{i}.py", f"text of document {i}\n" * (3 + i % 7)) for i in range(200)]
    tr1, va1, ntr, nva = split_documents(docs, 0.1)
    tr2, va2, _, _ = split_documents(list(reversed(docs)), 0.1)
    assert ntr + nva == 200 and ntr == len(tr1) and nva == len(va1)
    assert set(va1) == set(va2) and set(tr1) == set(tr2)  # order of discovery does not matter
    assert not set(tr1) & set(va1)
    share = sum(map(len, va1)) / sum(len(t) for _, t in docs)
    assert 0.1 <= share < 0.12
    # validation is the prefix of the documents ranked by the hash of their name
    ranked = [text for name, text in sorted(docs, key=lambda d: name_fraction(d[0]))]
    assert set(ranked[:nva]) == set(va1)


def test_split_huge_file_cannot_swallow_validation():
    docs = [("huge.txt", "x\n" * 50_000)] + [(f"small{i}.txt", f"small {i}\n" * 100) for i in range(20)]
    tr, va, ntr, nva = split_documents(docs, 0.1)
    assert "x\n" * 50_000 in tr and nva >= 1
    assert sum(map(len, va)) <= 0.2 * sum(len(t) for _, t in docs)


def test_split_keeps_both_sides_non_empty():
    docs = [("a.txt", "alpha\n"), ("b.txt", "beta\n")]
    for fraction in (1e-9, 0.49):
        tr, va, ntr, nva = split_documents(docs, fraction)
        assert ntr == 1 and nva == 1 and set(tr) | set(va) == {"alpha\n", "beta\n"}
    tr, va, _, _ = split_documents([("one.txt", "".join(f"line {i}\n" for i in range(100)))], 0.1)
    assert tr[0].endswith("line 89\n") and va[0].startswith("line 90\n")
    with pytest.raises(DataError, match="single line"):
        split_documents([("one.txt", "just one line")], 0.1)


def test_validation_text_unseen_in_training(stdlib_data):
    """Every validation window of 16 tokens is absent from the training array (files are disjoint)."""
    data, _ = stdlib_data
    train = np.asarray(data.train).astype(np.int64)
    val = np.asarray(data.val).astype(np.int64)

    def grams(a, n=16):
        w = np.lib.stride_tricks.sliding_window_view(a, n)
        return {hash(row.tobytes()) for row in w}

    val_grams = {hash(val[i:i + 16].tobytes()) for i in range(0, len(val) - 16, 97)}
    shared = val_grams & grams(train)
    # license headers and boilerplate can repeat across files; real leakage would share most windows
    assert len(shared) / len(val_grams) < 0.05


# --- files source ----------------------------------------------------------------------------------------------------


def test_folder_of_files(tmp_path):
    folder = _text_folder(tmp_path / "corpus")
    messages = []
    data = prepare_data(DataSource("files", path=folder), VOCAB, tmp_path / "cache", progress=messages.append)
    assert data.skipped_files == 2  # blob.bin and latin.txt
    assert data.n_train_docs + data.n_val_docs == 12  # .git/config skipped as hidden
    assert data.n_train_docs >= 1 and data.n_val_docs >= 1
    assert any("training a 512-token BPE tokenizer" in m for m in messages)
    meta = json.loads((Path(data.cache_path) / "meta.json").read_text())
    assert meta["source"]["kind"] == "files"


def test_single_file_is_split_by_lines(tmp_path):
    import sysconfig

    text = (Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_text("utf-8")
    f = tmp_path / "one.txt"
    f.write_text(text, "utf-8")
    data = prepare_data(DataSource("files", path=str(f)), VOCAB, tmp_path / "cache")
    assert data.n_train_docs == data.n_val_docs == 1
    assert 0.05 < data.n_val_tokens / (data.n_train_tokens + data.n_val_tokens) < 0.2


def test_max_bytes_caps_the_text(tmp_path):
    folder = _text_folder(tmp_path / "corpus")
    data = prepare_data(DataSource("files", path=str(folder), max_bytes=30_000), 300, tmp_path / "cache")
    assert 25_000 < data.n_bytes <= 30_000


def test_missing_path_error_names_path_and_fix(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=f"{missing} does not exist; point it at a text file"):
        DataSource("files", path=str(missing)).check()


def test_empty_folder_error_names_path_and_fix(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match=f"folder {empty} contains no files; put text files in it"):
        DataSource("files", path=str(empty)).check()


def test_only_binary_files_is_an_error(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"\x00\x01" * 100)
    with pytest.raises(DataError, match=r"no readable UTF-8 text .* \(1 binary or undecodable"):
        prepare_data(DataSource("files", path=str(folder)), VOCAB, tmp_path / "cache")


def test_source_validation():
    with pytest.raises(DataError, match="data.kind"):
        DataSource("web")
    with pytest.raises(DataError, match="data.path: missing"):
        DataSource("files")
    with pytest.raises(DataError, match="data.val_fraction"):
        DataSource(val_fraction=0.7)
    with pytest.raises(DataError, match="data.max_bytes"):
        DataSource(max_bytes=10)
    with pytest.raises(DataError, match="data.bogus: unknown data setting"):
        DataSource.from_dict({"kind": "stdlib", "bogus": 1})
    assert DataSource.from_dict({"kind": "files", "path": "x"}).path == "x"
    assert DataSource().max_bytes == DEFAULT_MAX_BYTES


def test_hf_without_datasets_names_the_install_command():
    """The real Hugging Face path needs the network and the optional package; offline we can test only this."""
    import importlib.util

    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("datasets is installed; the missing-package error cannot be provoked")
    with pytest.raises(DataError, match=r"pip install 'phase1-tuner\[hf\]'"):
        DataSource("hf", hf_name="wikitext").check()


# --- concurrency -----------------------------------------------------------------------------------------------------


def _prepare_in_child(cache: str, out: str, barrier) -> None:
    barrier.wait(60)  # both start preparing at the same moment, so they race for the same cache entry
    data = prepare_data(DataSource("stdlib", max_bytes=SMALL), VOCAB, cache)
    np.save(out, np.concatenate([np.asarray(data.train), np.asarray(data.val)]))
    Path(out + ".from_cache").write_text(str(data.from_cache))


def test_concurrent_prepare_from_two_processes(tmp_path):
    cache = tmp_path / "cache"
    ctx = mp.get_context("spawn")  # a fresh interpreter each, as two workers would be
    barrier = ctx.Barrier(2)
    outs = [str(tmp_path / f"out{i}.npy") for i in range(2)]
    procs = [ctx.Process(target=_prepare_in_child, args=(str(cache), out, barrier)) for out in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    a, b = np.load(outs[0]), np.load(outs[1])
    np.testing.assert_array_equal(a, b)
    # the lock lets exactly one of them build the entry; the other waits and reads it
    assert sorted(Path(o + ".from_cache").read_text() for o in outs) == ["False", "True"]
    entries = [p for p in cache.iterdir() if p.is_dir()]
    assert len(entries) == 1
    assert not list(entries[0].glob(".*.tmp"))  # no temporary file left behind
    data = prepare_data(DataSource("stdlib", max_bytes=SMALL), VOCAB, cache)
    assert data.from_cache and int(data.train.max()) < VOCAB
    np.testing.assert_array_equal(np.concatenate([data.train, data.val]), a)


@pytest.mark.slow
def test_default_stdlib_source_fills_a_gpt2_sized_vocabulary(tmp_path):
    """The default max_bytes is chosen so 50257 ids are all learned merges (see DEFAULT_MAX_BYTES)."""
    data = prepare_data(DataSource(), 50257, tmp_path)
    print(f"first prepare of the default stdlib source: {data.prepare_time_s:.1f} s, "
          f"{data.n_train_tokens} train + {data.n_val_tokens} val tokens")
    assert data.n_learned_tokens == 50257
    assert data.n_train_tokens > 2_000_000 and data.n_val_tokens > 200_000
