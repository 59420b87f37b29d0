"""CLI: subcommand discovery, --storage/--debug everywhere, one-line errors with exit 2, no torch for read-only
commands, and a bad study file leaving storage untouched."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml

from tests.tuner.study.test_spec import BAD
from tests.tuner.tiny import BASE
from tuner.cli import build_parser, main

REPO = Path(__file__).resolve().parents[3]
MINE = {"create", "status", "pareto", "report", "export", "dashboard"}


def _subparsers(parser):
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices


def test_discovers_commands_and_every_one_has_storage_and_debug():
    subs = _subparsers(build_parser())
    assert MINE <= set(subs)
    for name, p in subs.items():
        assert "--storage" in p._option_string_actions and "--debug" in p._option_string_actions, name


def test_tuner_error_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "sampler": {"name": "cmaes"}}))
    code = main(["create", str(bad), "--storage", f"sqlite:///{tmp_path}/t.db"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {bad}: sampler.name: 'cmaes' is not allowed"), err
    assert not (tmp_path / "t.db").exists()  # validation happens before storage is opened


def test_every_bad_spec_exits_2_with_one_line_and_no_storage(tmp_path, capsys):
    db = tmp_path / "t.db"
    for case, data, key, _ in BAD:
        path = tmp_path / f"{case}.yaml"
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        code = main(["create", str(path), "--storage", f"sqlite:///{db}"])
        err = capsys.readouterr().err
        assert code == 2, case
        assert err.count("\n") == 1 and err.startswith(f"error: {path}: ") and key in err, (case, err)
        assert not db.exists(), case


def test_unreachable_storage_via_cli(capsys):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    code = main(["status", "--study", "x", "--storage", f"postgresql+psycopg2://u:pw@127.0.0.1:{port}/db"])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - t0 < 10
    assert f"127.0.0.1:{port}" in err and ":pw@" not in err and err.count("\n") == 1, err


def test_debug_shows_the_traceback(tmp_path):
    from tuner.errors import SpecError

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [\n")
    with pytest.raises(SpecError):
        main(["create", str(bad), "--debug"])


def test_config_error_is_a_user_error(tmp_path, capsys):
    # a preset file whose config is invalid reaches the CLI as PresetError; a hand-written bad storage URL too
    code = main(["status", "--study", "x", "--storage", "notaurl"])
    assert code == 2 and capsys.readouterr().err.startswith("error: storage URL notaurl cannot be parsed")


def test_bad_spec_via_console_script_leaves_postgres_empty(tmp_path, pg_url):
    bad = tmp_path / "bad.yaml"
    d = dict(BASE)
    d["search_space"] = {"ar_ssm_max_rank": {"type": "int", "low": 64, "high": 8}}
    bad.write_text(yaml.safe_dump(d))
    r = subprocess.run(
        [sys.executable, "-m", "tuner.cli", "create", str(bad), "--storage", pg_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert (
        r.stderr.strip() == f"error: {bad}: search_space.ar_ssm_max_rank: low 64 > high 8; swap them or fix the range"
    )
    assert "Traceback" not in r.stderr
    assert optuna.get_all_study_summaries(pg_url, include_best_trial=False) == []


SCRIPT = textwrap.dedent("""
    import json, sys
    from tuner.cli import main
    url, study_file, out = sys.argv[1:4]
    codes = {}
    try:
        main(["--help"])
    except SystemExit as e:
        codes["help"] = e.code
    codes["create"] = main(["create", study_file, "--storage", url])
    import optuna
    from tuner.storage.constraints import set_trial_constraint
    from tuner.study.loader import load_spec
    spec = load_spec(study_file)
    study = optuna.load_study(study_name="unit", storage=url)
    for i, (ppl, vram) in enumerate([(40.0, 1.0), (30.0, 2.0), (20.0, 9.0)]):
        t = study.ask()
        params = spec.space.suggest(t)
        t.set_user_attr("config", spec.build_config(params).to_dict())
        t.set_user_attr("end_reason", "complete" if vram <= 8 else "vram_ceiling")
        t.set_user_attr("worker", "w0")
        set_trial_constraint(t, vram - spec.vram_ceiling_gib)
        study.tell(t, [ppl, vram])
    for cmd in (["status", "--json"], ["pareto", "--json"], ["export", "--max-vram-gib", "8", "--out", out]):
        codes[cmd[0]] = main([cmd[0], "--study", "unit", "--storage", url, *cmd[1:]])
    print(json.dumps({"codes": codes, "heavy": sorted(m for m in ("torch", "triton") if m in sys.modules)}))
""")


def test_read_only_commands_do_not_import_torch(tmp_path, pg_url):
    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump(BASE))
    out = tmp_path / "preset.yaml"
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, pg_url, str(study_file), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["codes"] == {"help": 0, "create": 0, "status": 0, "pareto": 0, "export": 0}, r.stderr
    assert result["heavy"] == [], "read-only commands imported " + ", ".join(result["heavy"])
    assert out.exists()
