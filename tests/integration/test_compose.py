"""docker-compose.yml parses, publishes Postgres and the dashboard on 127.0.0.1 only, takes the password from the
environment with no default, and reserves one GPU per worker service."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def test_parses_with_the_services(compose):
    assert {"postgres", "dashboard", "worker-gpu0"} <= set(compose["services"])


def test_published_ports_bind_loopback_only(compose):
    published = {name: svc.get("ports", []) for name, svc in compose["services"].items()}
    assert published["postgres"] and published["dashboard"]
    for name, ports in published.items():
        for p in ports:
            text = p if isinstance(p, str) else f"{p.get('host_ip', '')}:{p.get('published')}:{p.get('target')}"
            assert text.startswith("127.0.0.1:"), f"{name} publishes {text} beyond loopback"
    assert "network_mode" not in compose["services"]["postgres"]  # host networking would bypass the binding


def test_password_from_environment_without_default(compose):
    text = COMPOSE.read_text()
    uses = re.findall(r"\$\{POSTGRES_PASSWORD([^}]*)\}", text)
    assert uses and all(u.startswith(":?") for u in uses), uses  # required, never a default value
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert not re.search(r"postgres(ql)?(\+psycopg2)?://[^:$]+:(?!\$\{)[^@]+@", text), "a literal password in a URL"


def test_postgres_volume_and_healthcheck(compose):
    pg = compose["services"]["postgres"]
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert compose["services"]["dashboard"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_workers_reserve_one_gpu_each_and_share_the_storage(compose):
    workers = {n: s for n, s in compose["services"].items() if n.startswith("worker")}
    assert workers
    dashboard_url = compose["services"]["dashboard"]["command"][-1]
    gpus = []
    for name, svc in workers.items():
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and "gpu" in devices[0]["capabilities"] and len(devices[0]["device_ids"]) == 1
        gpus.append(devices[0]["device_ids"][0])
        assert svc["environment"]["TUNER_STORAGE"] == dashboard_url
        assert "tuner worker" in " ".join(svc["command"]) and "--gpu 0" in " ".join(svc["command"])
    assert len(set(gpus)) == len(gpus)  # one worker per GPU


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_config_accepts_it():
    env = {"POSTGRES_PASSWORD": "x", "PATH": "/usr/bin:/bin:/usr/local/bin"}
    r = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
