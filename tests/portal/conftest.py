"""Portal people: alice (modder) owns the persona, bob (modder) shares her role, charlie is only a player."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import Group


@pytest.fixture(autouse=True)
def _empty_cache():
    """Throttles (and whatever else a view caches) start empty in each test."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


def _join(user, *roles):
    user.groups.add(*Group.objects.filter(name__in=roles))
    return user


@pytest.fixture
def alice(alice):
    return _join(alice, "player", "modder")


@pytest.fixture
def bob(bob):
    return _join(bob, "player", "modder")


@pytest.fixture
def charlie(charlie):
    return _join(charlie, "player")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny starter model (seconds to build): a real base model for the smoke generation."""
    from inference.starter import build_starter_model

    return build_starter_model(tmp_path_factory.mktemp("models") / "tiny", size="tiny", seed=0, log=lambda _m: None)


@pytest.fixture
def base_model(settings, tmp_path, tiny_model):
    root = tmp_path / "base"
    shutil.copytree(tiny_model, root)
    (root / "voyager.json").write_text(json.dumps({"model_id": "tiny-test"}))
    settings.VOYAGER_BASE_MODEL = str(root)
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return root


class DaphneServer:
    """A running `manage.py runserver` (Daphne) and a way to run code against its own database."""

    def __init__(self, url: str, root: Path, env: dict):
        self.url, self._root, self._env = url, root, env

    def shell(self, code: str) -> str:
        """Run Python in the server's Django (its own SQLite database); what it prints comes back."""
        import subprocess
        import sys

        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "--no-imports", "-c", code],
            cwd=self._root,
            env=self._env,
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip()


@pytest.fixture
def daphne_server(tmp_path):
    """The real thing: `manage.py runserver` (Daphne, HTTP and WebSocket) on its own SQLite database,
    the embedded echo worker answering. Independent of the test database."""
    import os
    import socket
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        "VOYAGER_VAR_DIR": str(tmp_path / "var"),
        "VOYAGER_INFERENCE_BACKEND": "echo",
        "VOYAGER_EMBEDDED_WORKER": "1",
        "DEBUG": "1",
        "PYTHONUNBUFFERED": "1",
    }
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=root, env=env, check=True)
    subprocess.run([sys.executable, "manage.py", "bootstrap"], cwd=root, env=env, check=True, capture_output=True)
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("the server did not start: " + (tmp_path / "server.log").read_text())
        yield DaphneServer(f"http://localhost:{port}", root, env)
    finally:
        server.terminate()
        server.wait(10)
        log.close()
