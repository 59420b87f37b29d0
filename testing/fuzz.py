"""Property-based bad input for study files and presets (hypothesis), shared by the tests and the bench.

Each generated file goes through the real CLI in-process (`tuner.cli.main`): a malformed study to `tuner create`,
a malformed preset to `tuner train --preset` (with `--data` pointing at a missing folder, so a preset that loads
can never start training). The property: exit code != 0, stderr is exactly one line starting with `error: `, no
traceback, and nothing was written to the storage (the SQLite file of the example holds no study). Outcomes are
tallied in `Tally` so the bench can report the counts.
"""

from __future__ import annotations

import contextlib
import copy
import io
import string
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from testing.harness import tiny_spec
from tuner.study.spec import TOP_KEYS

MISSING_DATA = "/nonexistent/phase1_fuzz_data_dir"


# Every refusal must come this fast, in CPU seconds of this process (the CLI runs in-process): a 20 MB file took 49 s,
# an alias bomb over 47 s, both CPU-bound. CPU time, not wall time: the suite runs beside other tests on 2 cores, where
# a 0.3 s refusal measured 2.5 s of wall time; a refusal that waits instead of computing is caught by the wall limit.
ERROR_WITHIN_S = 2.0
ERROR_WALL_LIMIT_S = 15.0


@dataclass
class Tally:
    cases: int = 0
    tracebacks: int = 0  # escaped exceptions, and the CLI guard's "internal error" lines (a traceback in disguise)
    slow: int = 0  # errors that took longer than ERROR_WITHIN_S (CPU seconds; _timed_cli)
    slowest_error_s: float = 0.0
    failures: list[str] = field(default_factory=list)  # first few property violations, for the message

    def bad(self, what: str) -> None:
        if len(self.failures) < 5:
            self.failures.append(what)


def run_cli(argv: list[str]) -> tuple[int, str, str, str | None]:
    """(exit code, stdout, stderr, traceback text if main() raised) of `tuner ARGV` in this process."""
    from tuner.cli import main

    out, err = io.StringIO(), io.StringIO()
    tb = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 2
        except BaseException:  # noqa: BLE001 - an escaped exception is the traceback the property forbids
            tb = traceback.format_exc()
            code = -1
    return code, out.getvalue(), err.getvalue(), tb


def one_error_line(stderr: str) -> bool:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    return (
        len(lines) == 1
        and lines[0].startswith("error: ")
        and "Traceback" not in stderr
        and not is_internal_error(stderr)
    )


def is_internal_error(stderr: str) -> bool:
    """The CLI's last guard turned an unexpected exception into one line: still a bug for the fuzzer."""
    return stderr.startswith("error: internal error (")


def _timed_cli(argv: list[str], tally: Tally) -> tuple[int, str, str, str | None, float]:
    """Run the CLI in-process; returns (code, stdout, stderr, traceback, seconds), seconds being the CPU time it took,
    or the wall time when that is past ERROR_WALL_LIMIT_S (a refusal that waited), so either fails the limit."""
    t0, c0 = time.monotonic(), time.process_time()
    code, out, err, tb = run_cli(argv)
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    took = wall if wall > ERROR_WALL_LIMIT_S else cpu
    if code != 0:
        tally.slowest_error_s = max(tally.slowest_error_s, took)
        if took > ERROR_WITHIN_S:
            tally.slow += 1
    return code, out, err, tb, took


def studies_in(db: Path) -> list[str]:
    """Study names stored in a SQLite file (none when the file was never created)."""
    if not db.exists():
        return []
    import sqlite3

    con = sqlite3.connect(db)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "studies" not in tables:
            return []
        return [r[0] for r in con.execute("SELECT study_name FROM studies")]
    finally:
        con.close()


def check_study_text(text: str, folder: Path, tally: Tally, *, must_fail: bool) -> None:
    """`tuner create` on this study text; assert the property (bookkeeping in `tally`)."""
    tag = uuid.uuid4().hex[:10]
    path = folder / f"s_{tag}.yaml"
    db = folder / f"s_{tag}.db"
    path.write_text(text, encoding="utf-8")
    code, _out, err, tb, took = _timed_cli(["create", str(path), "--storage", f"sqlite:///{db}"], tally)
    tally.cases += 1
    if tb is not None or "Traceback" in err or is_internal_error(err):
        tally.tracebacks += 1
        tally.bad(f"traceback for study:\n{text[:2000]}\n{tb or err}")
        return
    if code != 0 and took > ERROR_WITHIN_S:
        tally.bad(f"error after {took:.1f} s of CPU (limit {ERROR_WITHIN_S} s): {err.strip()[:300]}\n{text[:2000]}")
    names = studies_in(db)
    if code == 0:
        if must_fail:
            tally.bad(f"accepted a malformed study (exit 0):\n{text}")
        elif names != [yaml.safe_load(text)["name"]]:
            tally.bad(f"exit 0 but storage holds {names}:\n{text}")
    else:
        if code != 2 or not one_error_line(err):
            tally.bad(f"exit {code} without exactly one `error:` line and exit 2 (stderr {err!r}):\n{text[:2000]}")
        if names:
            tally.bad(f"exit {code} but storage holds studies {names}:\n{text}")
    path.unlink()
    db.unlink(missing_ok=True)


def check_preset_text(text: str, folder: Path, tally: Tally) -> None:
    """`tuner train --preset FILE --data MISSING`: every case must end with one error line (never trains)."""
    path = folder / f"p_{uuid.uuid4().hex[:10]}.yaml"
    path.write_text(text, encoding="utf-8")
    code, _out, err, tb, took = _timed_cli(["train", "--preset", str(path), "--data", MISSING_DATA], tally)
    tally.cases += 1
    if tb is not None or "Traceback" in err or is_internal_error(err):
        tally.tracebacks += 1
        tally.bad(f"traceback for preset:\n{text[:2000]}\n{tb or err}")
    elif code != 2 or not one_error_line(err):
        tally.bad(f"exit {code}, stderr {err!r} for preset:\n{text[:2000]}")
    elif took > ERROR_WITHIN_S:
        tally.bad(f"error after {took:.1f} s of CPU (limit {ERROR_WITHIN_S} s): {err.strip()[:300]}")
    path.unlink()


# --- strategies -------------------------------------------------------------------------------------------------------

# the study file's top-level keys (one list: tuner.study.spec.TOP_KEYS) plus preset and nested keys the fuzzer mixes in
_KEYS = [
    *TOP_KEYS,
    "config",
    "provenance",
    "type",
    "low",
    "high",
    "choices",
    "metric",
    "direction",
    "source",
    "path",
    "d_model",
    "learning_rate",
]
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(_KEYS),
)
yaml_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(_KEYS), st.text(max_size=8)), inner, max_size=5),
    ),
    max_leaves=12,
)
raw_text = st.text(alphabet=string.printable + "äπ€\u3000", max_size=200)


def _insert(t: tuple[str, int, str]) -> str:
    text, at, ch = t
    at %= len(text) + 1
    return text[:at] + ch + text[at:]


# Random YAML-ish documents: dumped structures, raw text, and structure dumps with one syntax character inserted.
random_documents = st.one_of(
    yaml_values.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
    raw_text,
    st.tuples(
        yaml_values.map(lambda v: yaml.safe_dump(v)), st.integers(0, 10**6), st.sampled_from(list(":-[]{}!&*#'\"\t"))
    ).map(_insert),
)

TAG_PAYLOADS = [
    "!!python/object/apply:os.system [{cmd!r}]",
    "!!python/object/apply:subprocess.check_output [[sh, -c, {cmd!r}]]",
    "!!python/object/new:os.system [{cmd!r}]",
    "!!python/name:os.system",
    "!!python/object:__main__.X {{}}",
]


def _paths(d: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a nested dict/list (leaves and inner nodes)."""
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, prefix + (i,))
    return out


def _get(d: Any, path: tuple) -> Any:
    for k in path:
        d = d[k]
    return d


def _set(d: Any, path: tuple, value: Any) -> None:
    _get(d, path[:-1])[path[-1]] = value


def _delete(d: Any, path: tuple) -> None:
    parent = _get(d, path[:-1])
    del parent[path[-1]]


def base_study() -> dict[str, Any]:
    spec = tiny_spec("fuzzbase", 2)
    spec["search_space"]["use_gradient_checkpointing"] = {"type": "categorical", "choices": [True, False]}
    spec["pruning"] = {"learning_curve": {"enabled": False, "min_fraction": 0.25, "confidence": 0.9}}
    spec["estimate"] = {"enabled": True, "margin": 0.05}
    return spec


def _wrong_type(value: Any) -> list[Any]:
    """Values of a clearly wrong type for a node holding `value`."""
    if isinstance(value, bool):
        return ["maybe", [1], {"x": 1}, 3.5]
    if isinstance(value, (int, float)):
        return ["abc", [1, 2], {"x": 1}, True]
    if isinstance(value, str):
        return [[1, 2], {"x": 1}, None]
    if isinstance(value, list):
        return ["abc", 7, {"x": 1}]
    if isinstance(value, dict):
        return ["abc", 7, [1, 2]]
    return ["abc"]


@st.composite
def mutated_study(draw) -> str:
    """A valid tiny study with exactly one change that must make it invalid."""
    spec = base_study()
    kind = draw(
        st.sampled_from(
            [
                "wrong_type",
                "out_of_range",
                "unknown_key",
                "empty_choices",
                "low_gt_high",
                "missing_data_path",
                "bad_enum",
                "missing_key",
                "yaml_tag",
            ]
        )
    )
    if kind == "wrong_type":
        path = draw(st.sampled_from(_paths(spec)))
        _set(spec, path, draw(st.sampled_from(_wrong_type(_get(spec, path)))))
    elif kind == "out_of_range":
        target = draw(
            st.sampled_from(
                [
                    ("vram_ceiling_gib",),
                    ("n_trials",),
                    ("budget", "train_tokens"),
                    ("budget", "eval_tokens"),
                    ("budget", "trial_timeout_s"),
                    ("model", "d_model"),
                    ("model", "vocab_size"),
                    ("model", "n_layers"),
                    ("model", "batch_size"),
                    ("search_space", "learning_rate", "low"),
                    ("search_space", "ffn_rank", "step"),
                    ("estimate", "margin"),
                    ("pruning", "learning_curve", "confidence"),
                ]
            )
        )
        zero_ok = target in (("estimate", "margin"),)  # 0 is a valid margin
        _set(
            spec, target, draw(st.sampled_from([-1, -(10**9), float("-inf"), float("nan")] + ([] if zero_ok else [0])))
        )
    elif kind == "unknown_key":
        where = draw(
            st.sampled_from(
                [
                    (),
                    ("model",),
                    ("budget",),
                    ("sampler",),
                    ("data",),
                    ("search_space", "learning_rate"),
                    ("pruning", "learning_curve"),
                    ("estimate",),
                ]
            )
        )
        key = draw(st.text(alphabet=string.ascii_lowercase + "_", min_size=3, max_size=12))
        node = _get(spec, where)
        if key in node or (
            where == ("sampler",)
            and key in ("n_startup_trials", "multivariate", "constant_liar", "n_ei_candidates", "seed")
        ):
            key = key + "_zz_unknown"
        node[key] = draw(st.sampled_from([1, "x", True]))
    elif kind == "empty_choices":
        spec["search_space"]["use_gradient_checkpointing"]["choices"] = draw(st.sampled_from([[], None, "none"]))
    elif kind == "low_gt_high":
        p = draw(st.sampled_from(["learning_rate", "ffn_rank"]))
        lo, hi = spec["search_space"][p]["low"], spec["search_space"][p]["high"]
        spec["search_space"][p]["low"], spec["search_space"][p]["high"] = hi * 2, lo
    elif kind == "missing_data_path":
        spec["data"] = {
            "source": "files",
            "path": draw(st.sampled_from([MISSING_DATA, "relative/missing/dir", "/nonexistent.txt"])),
        }
    elif kind == "bad_enum":
        target = draw(
            st.sampled_from(
                [
                    ("sampler", "name"),
                    ("objectives", 0, "direction"),
                    ("objectives", 1, "metric"),
                    ("data", "source"),
                    ("model", "dtype"),
                    ("search_space", "learning_rate", "type"),
                ]
            )
        )
        _set(spec, target, draw(st.sampled_from(["tpee", "maximise", "ppl", "s3", "float64", "Random", ""])))
    elif kind == "missing_key":
        target = draw(
            st.sampled_from(
                [
                    ("name",),
                    ("vram_ceiling_gib",),
                    ("budget",),
                    ("budget", "train_tokens"),
                    ("search_space", "learning_rate", "type"),
                    ("search_space", "ffn_rank", "high"),
                    ("objectives", 0, "metric"),
                ]
            )
        )
        _delete(spec, target)
    elif kind == "yaml_tag":
        text = yaml.safe_dump(spec, sort_keys=False)
        payload = draw(st.sampled_from(TAG_PAYLOADS)).format(cmd="true")
        line = draw(st.sampled_from(["name", "vram_ceiling_gib", "n_trials"]))
        return (
            text.replace(f"\n{line}:", f"\n{line}: {payload}\nzz_{line}:", 1)
            if line != "name"
            else text.replace("name: fuzzbase", f"name: {payload}", 1)
        )
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


def base_preset() -> dict[str, Any]:
    from model.config import Phase1Config

    cfg = Phase1Config().replace(vocab_size=512, d_model=32, n_layers=1, n_seq=32, batch_size=2, dtype="float32")
    return {
        "config": cfg.to_dict(),
        "provenance": {
            "study": "s",
            "trial": 1,
            "val_ppl": 10.0,
            "peak_vram_gib": 0.1,
            "device": "cpu",
            "date": "2026-01-01",
            "version": "0.1.0",
            "train_tokens": 256,
            "eval_tokens": 128,
        },
    }


@st.composite
def mutated_preset(draw) -> str:
    """A preset with one change (most invalid; the CLI call fails anyway on the missing --data folder)."""
    p = copy.deepcopy(base_preset())
    kind = draw(
        st.sampled_from(
            ["wrong_type", "out_of_range", "unknown_key", "missing_config", "not_mapping", "yaml_tag", "provenance"]
        )
    )
    cfg = p["config"]
    if kind == "wrong_type":
        key = draw(st.sampled_from(sorted(cfg)))
        cfg[key] = draw(st.sampled_from(_wrong_type(cfg[key]) if cfg[key] is not None else ["abc", [1]]))
    elif kind == "out_of_range":
        key = draw(
            st.sampled_from(
                [
                    "d_model",
                    "vocab_size",
                    "n_layers",
                    "n_seq",
                    "batch_size",
                    "learning_rate",
                    "htt_num_cores",
                    "lns_block_size_m",
                    "stability_threshold",
                    "ffn_rank",
                ]
            )
        )
        cfg[key] = draw(st.sampled_from([0, -1, 10**9 + 7, 3]))
        if (key, cfg[key]) in {
            ("htt_num_cores", 3),
            ("n_layers", 3),
            ("n_seq", 3),
            ("batch_size", 3),
            ("learning_rate", 3),
            ("ffn_rank", 3),
            ("vocab_size", 3),
            ("n_layers", 10**9 + 7),
        }:
            cfg[key] = -1
    elif kind == "unknown_key":
        where = draw(st.sampled_from(["config", "top"]))
        key = draw(st.text(alphabet=string.ascii_lowercase + "_", min_size=3, max_size=12)) + "_zz"
        (cfg if where == "config" else p)[key] = 1
    elif kind == "missing_config":
        del p["config"]
    elif kind == "not_mapping":
        return yaml.safe_dump(draw(st.sampled_from([[1, 2], "text", 42, None, [p]])))
    elif kind == "yaml_tag":
        text = yaml.safe_dump(p, sort_keys=False)
        payload = draw(st.sampled_from(TAG_PAYLOADS)).format(cmd="true")
        return text.replace("  d_model: 32", f"  d_model: {payload}", 1)
    elif kind == "provenance":
        key = draw(st.sampled_from(["train_tokens", "eval_tokens", "data", "trial", "val_ppl"]))
        p["provenance"][key] = draw(st.sampled_from(["abc", [1], {"source": "nowhere"}, -5, None]))
    return yaml.safe_dump(p, sort_keys=False)
