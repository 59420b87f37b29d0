"""Security: no credentials in the repository, storage passwords masked in every output we can trigger, the
dashboard and Postgres bound to 127.0.0.1 by default. (Study/preset files cannot execute code:
test_fuzz_inputs.py::test_yaml_tags_cannot_execute_code.)"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import yaml

from testing import fuzz
from testing.harness import REPO, child_env, tiny_spec, write_study

# A password that appears nowhere else: if it shows up in output, it leaked.
SECRET = "Rel" + "Pw" + "7q9Zx"

# --- credentials in the repository ----------------------------------------------------------------------------------
_PLACEHOLDERS = re.compile(r"^(\$\{.*\}?|\*+|<.*>|x+|\.\.\.|password|passwd|pass|pw|secret|changeme|PASSWORD|"
                           r"\{.*\}|%.*|\$[A-Z_]+)$", re.I)
_URL_PW = re.compile("[A-Za-z][A-Za-z0-9+.-]*" + "://" + r"[^:/@\s'\"]+:([^@\s'\"]+)@")
_KEY_PATTERNS = [
    re.compile("AKIA" + r"[0-9A-Z]{16}"),  # AWS access key id
    re.compile("-----BEGIN " + r"(RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"),
    re.compile("gh" + r"[pousr]_[A-Za-z0-9]{36}"),  # GitHub tokens
    re.compile("hf" + r"_[A-Za-z0-9]{34}"),  # Hugging Face tokens
    re.compile("sk" + r"-[A-Za-z0-9]{32,}"),  # API secret keys
    re.compile(r"(?i)\b(password|passwd|secret|api_key|token)\b\s*[:=]\s*['\"]([A-Za-z0-9!@#%^&*_+\-]{6,})['\"]"),
]


def credential_findings(text: str, *, test_file: bool = False) -> list[str]:
    """Credential-like strings in `text`. In a test file, a URL password that the same file shows masked or asserts
    absent from an output is a masking fixture, not a credential."""
    found = []
    for m in _URL_PW.finditer(text):
        pw = m.group(1)
        if _PLACEHOLDERS.match(pw):
            continue
        if test_file and (m.group(0).replace(f":{pw}@", ":***@") in text
                          or re.search(rf"['\"]{re.escape(pw)}['\"] not in", text)):
            continue
        found.append(m.group(0))
    for pat in _KEY_PATTERNS:
        found += [m.group(0) for m in pat.finditer(text)]
    return found


def test_scanner_finds_planted_credentials():
    planted = ["postgresql+psycopg2://tuner:" + SECRET + "@db:5432/tuner", "AKIA" + "ABCDEFGHIJKLMNOP",
               "password = '" + SECRET + "'", "gh" + "p_" + "a" * 36]
    for text in planted:
        assert credential_findings(text), text
    fixture = 'url = "postgresql://u:' + SECRET + '@h/d"\nassert "' + SECRET + '" not in out'
    assert credential_findings(fixture) and not credential_findings(fixture, test_file=True)
    for ok in ["postgresql+psycopg2://tuner:${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}@postgres:5432/tuner",
               "postgresql+psycopg2://user:PASSWORD@127.0.0.1:5432/tuner", "postgresql://u:***@h/db"]:
        assert not credential_findings(ok), ok


def test_no_credentials_in_the_repository():
    """Every file git tracks or would add (tracked + untracked not ignored)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    assert len(files) > 20
    findings = {}
    for name in files:
        p = REPO / name
        if not p.is_file() or p.stat().st_size > 2_000_000:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        hits = credential_findings(text, test_file=name.startswith("tests/"))
        if hits:
            findings[name] = hits
    assert not findings, f"credential-like strings in the repository: {findings}"


# --- masking --------------------------------------------------------------------------------------------------------

def _with_password(pg_url: str) -> str:
    """The same database with a password in the URL (the local server trusts loopback, so it still connects)."""
    return pg_url.replace("postgres@", f"postgres:{SECRET}@", 1)


def test_password_masked_in_cli_output(tmp_path, pg_url):
    url = _with_password(pg_url)
    study = write_study(tmp_path, tiny_spec("secure", 2))
    outputs = []
    for argv in (["create", str(study), "--storage", url], ["create", str(study), "--storage", url],
                 ["status", "--study", "secure", "--storage", url], ["status", "--study", "secure", "--json",
                                                                      "--storage", url],
                 ["pareto", "--study", "secure", "--storage", url],
                 ["status", "--study", "no_such_study", "--storage", url],
                 # unreachable server, wrong database: the driver's own messages pass through masking
                 ["status", "--study", "secure", "--storage", url.rsplit(":", 1)[0] + ":1/x"],
                 ["status", "--study", "secure", "--storage", url.rsplit("/", 1)[0] + "/no_such_db_" + SECRET[:3]]):
        code, out, err, tb = fuzz.run_cli(argv)
        assert tb is None, tb
        outputs.append((argv[0], code, out + err))
    codes = [c for _, c, _ in outputs]
    assert codes[:5] == [0, 0, 0, 0, 0] and all(c == 2 for c in codes[5:]), outputs
    text = "\n".join(o for _, _, o in outputs)
    assert SECRET not in text, text
    assert "postgres:***@" in text  # the URL is shown, masked


def test_password_masked_in_subprocess_logs(tmp_path, pg_url):
    """`tuner create` and `tuner status` as real processes, URL in TUNER_STORAGE; logs at any level."""
    url = _with_password(pg_url)
    study = write_study(tmp_path, tiny_spec("secure_sub", 1))
    env = child_env(url)
    outs = []
    for argv in (["create", str(study)], ["status", "--study", "secure_sub"],
                 ["status", "--study", "secure_sub", "--storage", url.replace("127.0.0.1:5432", "127.0.0.1:1")]):
        r = subprocess.run([sys.executable, "-m", "tuner.cli", *argv], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=120)
        outs.append(r.stdout + r.stderr)
        assert "Traceback" not in r.stderr
    assert SECRET not in "\n".join(outs), outs
    assert "***" in outs[0] and "127.0.0.1:1" in outs[2]


# --- loopback by default --------------------------------------------------------------------------------------------

def test_compose_publishes_only_on_loopback():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    published = []
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            published.append((name, str(port)))
            assert str(port).startswith("127.0.0.1:"), f"service {name} publishes {port} beyond loopback"
    assert {n for n, _ in published} >= {"postgres", "dashboard"}
    # no secret default for the database password: it must come from the environment
    pw = compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert pw.startswith("${") and not credential_findings((REPO / "docker-compose.yml").read_text())


def _listening(port: int) -> list[str]:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    return [line.split()[3] for line in out.splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_binds_loopback_by_default(tmp_path, pg_url):
    from tuner.cli import build_parser

    assert build_parser().parse_args(["dashboard"]).host == "127.0.0.1"
    url = _with_password(pg_url)
    port = _free_port()
    log = tmp_path / "dash.log"
    with open(log, "w") as out:
        p = subprocess.Popen([sys.executable, "-m", "tuner.cli", "dashboard", "--port", str(port)], cwd=REPO,
                             env=child_env(url), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not _listening(port) and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.3)
        addrs = _listening(port)
        assert addrs, f"dashboard never listened: {log.read_text()}"
        assert all(a.startswith("127.0.0.1:") for a in addrs), addrs
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    text = log.read_text()
    assert SECRET not in text and "***" in text, text
