"""The CLI's top-level guard, through the real `tuner` process: every failure is one `error:` line with a meaningful
exit code (2 user error, 141 closed stdout), no traceback without --debug; `--out` never destroys what it replaces
(existing files need --force; folders, devices, unwritable places refused); flags are checked before storage."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.tuner.tiny import BASE, REPO


def cli(*args: str, unprivileged: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m tuner.cli ARGS` in a child process. `unprivileged`: as root, drop the capabilities that let root
    read and write regardless of permissions, so a permission error is real."""
    cmd = [sys.executable, "-m", "tuner.cli", *args]
    if unprivileged and os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *cmd]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def one_line(r: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.fixture
def study_db(tmp_path: Path) -> str:
    """A SQLite storage holding study `unit` with one feasible completed trial (exportable) and one over the
    ceiling, made through the real API without training."""
    import optuna

    from tuner.cli import main
    from tuner.storage.constraints import set_trial_constraint
    from tuner.study.loader import load_spec

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump(BASE))
    assert main(["create", str(study_file), "--storage", url]) == 0
    spec = load_spec(study_file)
    study = optuna.load_study(study_name="unit", storage=url)
    for ppl, vram in [(30.0, 2.0), (20.0, 9.0)]:
        t = study.ask()
        t.set_user_attr("config", spec.build_config(spec.space.suggest(t)).to_dict())
        set_trial_constraint(t, vram - spec.vram_ceiling_gib)
        study.tell(t, [ppl, vram])
    return url


def test_closed_stdout_exits_quietly(study_db):
    # `tuner pareto --json | head`: the reader is gone before the CLI writes (closed at once here, so always)
    p = subprocess.Popen(
        [sys.executable, "-m", "tuner.cli", "pareto", "--study", "unit", "--json", "--storage", study_db],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(120) == 141, err
    assert err == "", err  # neither a traceback nor Python's "Exception ignored ... BrokenPipeError"


def test_closed_stdout_through_a_shell_pipe(study_db):
    r = subprocess.run(
        [
            "bash",
            "-c",
            f"{sys.executable} -m tuner.cli pareto --study unit --json --storage "
            f"{study_db} | head -c 0; echo ${{PIPESTATUS[0]}}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.stdout.strip() in ("0", "141") and "Traceback" not in r.stderr and "Error" not in r.stderr, r


def test_unknown_dialect_names_the_fix():
    line = one_line(cli("status", "--study", "x", "--storage", "postgres://u:secret@127.0.0.1:5432/db"))
    assert "unknown database dialect 'postgres'; use postgresql+psycopg2://" in line and "secret" not in line


def test_argparse_errors_are_one_line():
    line = one_line(cli("run", "studies/quickstart.yaml", "--n-trials", "many"))
    assert line.startswith("error: tuner run: argument --n-trials:") and "see `tuner run --help`" in line
    one_line(cli("nosuchcommand"))


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["run", "S", "--n-trials", "0"], "--n-trials"),
        (["run", "S", "--n-trials", "-3"], "--n-trials"),
        (["run", "S", "--threads", "-4"], "--threads"),
        (["run", "S", "--grace-s", "0"], "--grace-s"),
        (["worker", "--study", "unit", "--n-trials", "0"], "--n-trials"),
        (["worker", "--study", "unit", "--threads", "-1"], "--threads"),
        (["worker", "--study", "unit", "--gpu", "-1"], "--gpu"),
        (["launch", "S", "--workers", "0"], "--workers"),
        (["launch", "S", "--workers", "2", "--n-trials", "-1"], "--n-trials"),
        (["launch", "S", "--workers", "2", "--max-restarts", "-1"], "--max-restarts"),
        (["launch", "S", "--workers", "2", "--heartbeat-s", "0"], "--heartbeat-s"),
    ],
)
def test_bad_flags_fail_before_storage(tmp_path, capsys, argv, flag):
    err = bad_flag_error(tmp_path, capsys, argv)
    assert err.startswith(f"error: tuner {argv[0]}: argument {flag}:") and "out of range" in err


def bad_flag_error(tmp_path, capsys, argv: list[str]) -> str:
    """Run `tuner ARGV --storage sqlite:///...` in-process (an "S" in argv is a valid study file) and return its
    stderr, having checked it is one line with exit 2 and that nothing was touched (no database file)."""
    from tuner.cli import main

    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump(BASE))
    db = tmp_path / "flags.db"
    argv = [str(study_file) if a == "S" else a for a in argv]
    with pytest.raises(SystemExit) as info:  # in-process: argparse exits from parse_args
        main([*argv, "--storage", f"sqlite:///{db}"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1, err
    assert not db.exists()  # nothing touched: no FAIL trial, no study
    return err


def test_unreadable_study_file(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(BASE))
    f.chmod(0)
    line = one_line(cli("create", str(f), "--storage", f"sqlite:///{tmp_path / 'x.db'}", unprivileged=True))
    assert line == f"error: {f}: cannot be read (permission denied); check the file's permissions"


def test_existing_out_is_refused_without_force(tmp_path, study_db):
    out = tmp_path / "preset.yaml"
    out.write_text("mine\n")
    line = one_line(cli("export", "--study", "unit", "--max-vram-gib", "8", "--out", str(out), "--storage", study_db))
    assert line == f"error: {out}: already exists; pass --force to replace it, or choose another path"
    assert out.read_text() == "mine\n"
    r = cli("export", "--study", "unit", "--max-vram-gib", "8", "--out", str(out), "--force", "--storage", study_db)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(out.read_text())["provenance"]["trial"] == 0


def test_out_onto_a_folder_or_device_is_refused(tmp_path, study_db):
    line = one_line(
        cli(
            "export", "--study", "unit", "--max-vram-gib", "8", "--out", str(tmp_path), "--force", "--storage", study_db
        )
    )
    assert "is a folder" in line and tmp_path.is_dir()
    if Path("/dev/full").exists():  # replaced by a regular file (as root) before the fix
        line = one_line(
            cli(
                "export",
                "--study",
                "unit",
                "--max-vram-gib",
                "8",
                "--out",
                "/dev/full",
                "--force",
                "--storage",
                study_db,
            )
        )
        assert "is not a regular file" in line
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_out_through_a_symlink_replaces_the_target(tmp_path, study_db):
    target = tmp_path / "presets" / "v1.yaml"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "latest.yaml"
    link.symlink_to(target)
    r = cli("export", "--study", "unit", "--max-vram-gib", "8", "--out", str(link), "--force", "--storage", study_db)
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and Path(os.readlink(link)) == target  # the link stays a link
    assert "provenance" in yaml.safe_load(target.read_text())


def test_unwritable_out(tmp_path, study_db):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    line = one_line(
        cli(
            "export",
            "--study",
            "unit",
            "--max-vram-gib",
            "8",
            "--out",
            str(ro / "p.yaml"),
            "--storage",
            study_db,
            unprivileged=True,
        )
    )
    assert line.startswith(f"error: {ro / 'p.yaml'}: cannot write there (permission denied)")
    line = one_line(
        cli("report", "--study", "unit", "--out", str(ro / "rep"), "--storage", study_db, unprivileged=True)
    )
    assert "cannot create the folder (permission denied)" in line


def test_report_out_must_be_an_empty_or_new_folder(tmp_path, study_db):
    f = tmp_path / "file"
    f.write_text("x")
    assert "is not a folder" in one_line(cli("report", "--study", "unit", "--out", str(f), "--storage", study_db))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    line = one_line(cli("report", "--study", "unit", "--out", str(full), "--storage", study_db))
    assert "folder is not empty; pass --force" in line and sorted(p.name for p in full.iterdir()) == ["keep.txt"]


def test_read_only_commands_do_not_create_a_missing_sqlite_file(tmp_path):
    db = tmp_path / "nosuch.db"
    for argv in (["status", "--study", "x"], ["pareto", "--study", "x"]):
        line = one_line(cli(*argv, "--storage", f"sqlite:///{db}"))
        assert "no such SQLite file" in line
    assert not db.exists()


def test_corrupted_and_truncated_sqlite_files(tmp_path, study_db):
    good = Path(study_db.split("///", 1)[1]).read_bytes()
    cases = {"truncated.db": good[: len(good) // 2], "garbage.db": b"not a database at all\n" * 200}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        line = one_line(cli("status", "--study", "unit", "--storage", f"sqlite:///{tmp_path / name}"))
        assert "not a usable SQLite database" in line, name


def test_create_prints_no_optuna_log_line(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(BASE))
    r = cli("create", str(f), "--storage", f"sqlite:///{tmp_path / 'c.db'}")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_every_subcommand_help_has_a_description():
    from tuner.cli import build_parser

    subs = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name, p in subs.items():
        assert p.description and len(p.description) > 20, name


def test_params_typo_gets_a_suggestion(capsys):
    from tuner.cli import main

    code = main(["estimate", str(REPO / "studies" / "quickstart.yaml"), "--params", "ar_ssm_max_rnk=8"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "did you mean 'ar_ssm_max_rank'?" in err, err
    code = main(["estimate", str(REPO / "studies" / "quickstart.yaml"), "--params", "d_model=8"])
    assert code == 2 and "(fixed under model: d_model: 64)" in capsys.readouterr().err


def test_estimate_refuses_sizes_no_gpu_holds_at_once(capsys):
    import time

    from tuner.cli import main

    t0 = time.monotonic()
    code = main(["estimate", "--preset", "8gb", "--batch-size", str(10**11)])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - t0 < 2.0
    assert err.startswith("error: batch_size: ") and "more than any GPU holds" in err, err


def test_study_name_length_on_postgres(tmp_path, pg_url, capsys):
    """Over 512 characters failed inside Postgres (VARCHAR(512)) with a traceback; now the loader refuses it, and
    512 itself is stored."""
    import optuna

    from tuner.cli import main

    for n, expected in ((600, 2), (512, 0)):
        f = tmp_path / f"s{n}.yaml"
        f.write_text(yaml.safe_dump({**BASE, "name": "s" * n}))
        assert main(["create", str(f), "--storage", pg_url]) == expected
        err = capsys.readouterr().err
        assert (err == "") if expected == 0 else (err.count("\n") == 1 and "at most 512" in err), err
    names = [s.study_name for s in optuna.get_all_study_summaries(pg_url, include_best_trial=False)]
    assert names == ["s" * 512]


def test_damage_inside_a_sqlite_file_is_a_user_error(tmp_path):
    """Pages past the schema damaged: the file opens, then a query fails (Optuna's StorageInternalError wrapping
    sqlite's "malformed"); one line naming the damage, exit 2, instead of "internal error"."""
    import random

    import optuna

    db = tmp_path / "damaged.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="q", storage=f"sqlite:///{db}")
    for i in range(300):
        study.enqueue_trial({"x": i}, user_attrs={"pad": "y" * 500})
    data = bytearray(db.read_bytes())
    rng = random.Random(1)
    for off in range(len(data) // 2, len(data) // 2 + 20_000):
        data[off] = rng.randrange(256)
    db.write_bytes(bytes(data))
    line = one_line(cli("status", "--study", "q", "--storage", f"sqlite:///{db}"))
    assert "SQLite storage is damaged" in line or "not a usable SQLite database" in line, line
