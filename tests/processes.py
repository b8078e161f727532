"""Helpers for tests that run parts of the platform as separate processes (Daphne, workers, Celery)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import quote


def child_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update({"PYTHONUNBUFFERED": "1", "DJANGO_SETTINGS_MODULE": "portal.settings", **extra})
    return env


def child_database_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    assert s["ENGINE"].endswith("postgresql"), (
        "processes beside the tests need PostgreSQL (DATABASE_URL=postgres://...)"
    )
    auth = quote(s["USER"] or "", safe="")
    if s["PASSWORD"]:
        auth += ":" + quote(s["PASSWORD"], safe="")
    host = s["HOST"] or "127.0.0.1"
    port = f":{s['PORT']}" if s["PORT"] else ""
    return f"postgres://{auth}@{host}{port}/{quote(s['NAME'], safe='')}"


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc})"
