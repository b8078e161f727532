"""compose.yaml and deploy/ cannot run here (no Docker): keep them consistent with each other and the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_the_topology_has_every_process(compose):
    assert set(compose["services"]) == {
        "postgres",
        "redis",
        "migrate",
        "daphne1",
        "daphne2",
        "worker1",
        "worker2",
        "celery",
        "celery-validation",
        "beat",
        "nginx",
        "prometheus",
    }


def test_the_commands_are_the_readmes(compose):
    readme = (ROOT / "README.md").read_text()
    services = compose["services"]
    assert "python manage.py inference_worker" in readme
    for name in ("worker1", "worker2"):
        assert services[name]["command"] == ["python", "manage.py", "inference_worker"]
    assert services["celery"]["command"][:4] == ["celery", "-A", "portal", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "portal", "beat"]
    # Uploads' smoke checks have a worker of their own, on the queue every process routes them to.
    validation = services["celery-validation"]
    queue = validation["command"][validation["command"].index("-Q") + 1]
    assert queue == validation["environment"]["VOYAGER_VALIDATION_QUEUE"] == "validation"
    for name, port in (("daphne1", "8001"), ("daphne2", "8002")):
        command = services[name]["command"]
        assert command[0] == "daphne" and command[-1] == "portal.asgi:application" and port in command
        assert f"127.0.0.1:{port}/healthz" in " ".join(services[name]["healthcheck"]["test"])


def test_every_app_process_gets_the_database_and_redis_and_waits_for_migrate(compose):
    for name in ("daphne1", "daphne2", "worker1", "worker2", "celery", "celery-validation", "beat"):
        service = compose["services"][name]
        assert service["environment"]["DATABASE_URL"].startswith("postgres://")
        assert service["environment"]["REDIS_URL"].startswith("redis://redis:")
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_the_proxy_and_prometheus_know_both_daphnes():
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert set(re.findall(r"server (daphne\d:\d+)", nginx)) == {"daphne1:8001", "daphne2:8002"}
    assert "proxy_set_header Upgrade $http_upgrade" in nginx and "location /ws/" in nginx
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["daphne1:8001", "daphne2:8002"] and prometheus["scrape_configs"][0]["metrics_path"] == "/metrics"
