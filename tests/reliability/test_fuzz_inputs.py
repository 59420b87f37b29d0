"""Bad input, property-based: >= 1000 generated study and preset files through the real CLI, plus hostile ones
(alias bombs, deep nesting, duplicate keys, huge integers, huge grids, bad types, sizes no GPU holds, long names,
oversized files: testing/fuzz_hostile.py). Every malformed file gives exit 2 with exactly one `error:` line within
2 s, never a traceback (nor the CLI guard's "internal error"), never a study in storage; files are parsed with safe
loaders only (a YAML tag that would run a command runs nothing)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from testing import fuzz, fuzz_hostile
from testing.harness import REPO, child_env

FUZZ = settings(deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
N_MUTATED_STUDIES = 450
N_RANDOM_DOCUMENTS = 300
N_MUTATED_PRESETS = 300  # 1050 in all
N_HOSTILE_STUDIES = 200
N_HOSTILE_PRESETS = 60


def _assert_clean(tally: fuzz.Tally, expected: int) -> None:
    assert tally.cases == expected
    assert tally.tracebacks == 0 and tally.slow == 0 and not tally.failures, "\n\n".join(tally.failures)


def test_hostile_study_files_fail_fast_with_one_error_line(tmp_path):
    fuzz.run_cli(["create", str(tmp_path / "missing.yaml")])  # imports out of the way: the 2 s are the check's
    tally = fuzz.Tally()

    @settings(FUZZ, max_examples=N_HOSTILE_STUDIES)
    @given(fuzz_hostile.hostile_study())
    def prop(text):
        fuzz.check_study_text(text, tmp_path, tally, must_fail=True)

    prop()
    _assert_clean(tally, N_HOSTILE_STUDIES)
    assert tally.slowest_error_s < fuzz.ERROR_WITHIN_S


def test_hostile_presets_fail_fast_with_one_error_line(tmp_path):
    fuzz.run_cli(["train", "--preset", str(tmp_path / "missing.yaml")])
    tally = fuzz.Tally()

    @settings(FUZZ, max_examples=N_HOSTILE_PRESETS)
    @given(fuzz_hostile.hostile_preset())
    def prop(text):
        fuzz.check_preset_text(text, tmp_path, tally)

    prop()
    # the preset strategy has about 45 distinct documents; hypothesis stops once it has drawn them all
    assert tally.cases >= 40
    _assert_clean(tally, tally.cases)


def test_every_hostile_kind_is_generated():
    """The strategies reach every kind (a kind that is never drawn would be a claim without a test)."""
    from hypothesis import find

    for kind, marker in {
        "alias_bomb": "&b0",
        "deep_nesting": "[[[[[[[[[[",
        "huge_file": "x" * 5000,
        "long_name": "s" * 513,
    }.items():
        find(fuzz_hostile.hostile_study(), lambda text, m=marker: m in text, settings=settings(FUZZ, max_examples=500))
        assert kind in fuzz_hostile.HOSTILE_KINDS


def test_mutated_study_files_fail_with_one_error_line(tmp_path):
    tally = fuzz.Tally()

    @settings(FUZZ, max_examples=N_MUTATED_STUDIES)
    @given(fuzz.mutated_study())
    def prop(text):
        fuzz.check_study_text(text, tmp_path, tally, must_fail=True)

    prop()
    _assert_clean(tally, N_MUTATED_STUDIES)


def test_random_documents_never_traceback_or_leave_a_partial_study(tmp_path):
    tally = fuzz.Tally()

    @settings(FUZZ, max_examples=N_RANDOM_DOCUMENTS)
    @given(fuzz.random_documents)
    def prop(text):
        fuzz.check_study_text(text, tmp_path, tally, must_fail=False)

    prop()
    _assert_clean(tally, N_RANDOM_DOCUMENTS)


def test_mutated_presets_fail_with_one_error_line(tmp_path):
    tally = fuzz.Tally()

    @settings(FUZZ, max_examples=N_MUTATED_PRESETS)
    @given(fuzz.mutated_preset())
    def prop(text):
        fuzz.check_preset_text(text, tmp_path, tally)

    prop()
    _assert_clean(tally, N_MUTATED_PRESETS)


def test_valid_base_files_are_accepted(tmp_path):
    """The mutations start from files the CLI accepts: a failure above is the mutation's doing."""
    tally = fuzz.Tally()
    fuzz.check_study_text(yaml.safe_dump(fuzz.base_study()), tmp_path, tally, must_fail=False)
    assert tally.cases == 1 and not tally.failures, tally.failures
    from tuner.study.preset import load_preset

    p = tmp_path / "base_preset.yaml"
    p.write_text(yaml.safe_dump(fuzz.base_preset()))
    assert load_preset(p).config.d_model == 32


def _tag_documents(marker) -> dict[str, str]:
    cmd = f"touch {marker}"
    study = yaml.safe_dump(fuzz.base_study(), sort_keys=False)
    preset = yaml.safe_dump(fuzz.base_preset(), sort_keys=False)
    return {
        "whole_document": f"!!python/object/apply:os.system [{cmd!r}]\n",
        "study_value": study.replace("n_trials: 2", f"n_trials: !!python/object/apply:os.system [{cmd!r}]"),
        "preset_value": preset.replace("  d_model: 32", f"  d_model: !!python/object/apply:os.system [{cmd!r}]"),
    }


@pytest.mark.parametrize("command", ["create", "train"])
def test_yaml_tags_cannot_execute_code(tmp_path, command):
    marker = tmp_path / "EXECUTED"
    docs = _tag_documents(marker)
    # The payload is live: an unsafe loader really runs it (so a service using one would fail this test).
    yaml.unsafe_load(docs["whole_document"])
    assert marker.exists()
    marker.unlink()
    for name, text in docs.items():
        f = tmp_path / f"{name}.yaml"
        f.write_text(text)
        argv = (
            ["create", str(f), "--storage", f"sqlite:///{tmp_path / 'x.db'}"]
            if command == "create"
            else ["train", "--preset", str(f), "--data", fuzz.MISSING_DATA]
        )
        code, _out, err, tb = fuzz.run_cli(argv)
        assert tb is None, tb
        assert code != 0 and fuzz.one_error_line(err), (name, code, err)
        assert not marker.exists(), f"{command} {name}: the YAML tag executed a command"
    assert fuzz.studies_in(tmp_path / "x.db") == []


def test_malformed_files_through_a_real_process(tmp_path):
    """A handful through `python -m tuner.cli` (what a user runs): exit 2, one error line, no traceback."""
    marker = tmp_path / "EXECUTED"
    spec = fuzz.base_study()
    cases = {
        "not_yaml.yaml": "name: [unclosed\n",
        "tag.yaml": _tag_documents(marker)["study_value"],
        "low_gt_high.yaml": yaml.safe_dump(
            {**spec, "search_space": {"learning_rate": {"type": "float", "low": 0.1, "high": 0.01}}}
        ),
        "missing_data.yaml": yaml.safe_dump({**spec, "data": {"source": "files", "path": fuzz.MISSING_DATA}}),
        "empty.yaml": "",
    }
    db = tmp_path / "sub.db"
    for name, text in cases.items():
        f = tmp_path / name
        f.write_text(text)
        r = subprocess.run(
            [sys.executable, "-m", "tuner.cli", "create", str(f), "--storage", f"sqlite:///{db}"],
            cwd=REPO,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2 and fuzz.one_error_line(r.stderr), (name, r.returncode, r.stderr)
    preset = tmp_path / "preset.yaml"
    preset.write_text(_tag_documents(marker)["preset_value"])
    r = subprocess.run(
        [sys.executable, "-m", "tuner.cli", "train", "--preset", str(preset)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and fuzz.one_error_line(r.stderr), r.stderr
    assert not marker.exists() and fuzz.studies_in(db) == []


def test_a_refusal_is_timed_by_cpu_unless_it_waits_past_the_wall_limit(monkeypatch):
    """The refusal limit counts CPU seconds (a loaded machine stretches wall time, not CPU time); a refusal that
    waits (a sleep here, standing for a hang) longer than ERROR_WALL_LIMIT_S is counted by its wall time instead, so
    it still fails. Limits scaled down so the check takes a fraction of a second."""
    import time

    monkeypatch.setattr(fuzz, "ERROR_WITHIN_S", 0.1)
    monkeypatch.setattr(fuzz, "ERROR_WALL_LIMIT_S", 0.4)

    def waits(seconds: float):
        def run_cli(argv):
            time.sleep(seconds)
            return 2, "", "error: refused", None

        return run_cli

    tally = fuzz.Tally()
    monkeypatch.setattr(fuzz, "run_cli", waits(0.2))  # 0.2 s of wall, ~0 of CPU, under the wall limit
    assert fuzz._timed_cli(["create"], tally)[4] < 0.1 and tally.slow == 0
    monkeypatch.setattr(fuzz, "run_cli", waits(0.5))  # past the wall limit: its wall time counts
    assert fuzz._timed_cli(["create"], tally)[4] >= 0.5 and tally.slow == 1
