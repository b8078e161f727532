"""Helpers for tests that run parts of the platform as separate processes (Daphne, workers, Celery, manage.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parents[1]

needs_backends = pytest.mark.skipif(
    not (os.environ.get("REDIS_URL") and os.environ.get("DATABASE_URL", "").startswith("postgres")),
    reason="needs REDIS_URL and a PostgreSQL DATABASE_URL (a real broker and a database a worker process can share)",
)


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


def run_manage(*args, **environ):
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "VOYAGER_"))
    }
    clean.update(environ)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120
    )


def wait_for_ready_line(worker, ready: threading.Event) -> None:
    """The worker prints system-check warnings first (no model built yet, say): wait for its own line."""
    for line in worker.stdout:  # read to the end, so a full pipe never blocks the worker's logging
        if " ready" in line:
            ready.set()


class worker_process:
    """A real `inference_worker --backend echo` process, answering word by word every `delay` seconds."""

    def __init__(self, delay: float):
        self.delay = delay

    async def __aenter__(self) -> subprocess.Popen:
        env = {**os.environ, "VOYAGER_ECHO_DELAY": str(self.delay), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "inference_worker", "--backend", "echo"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()
        threading.Thread(target=wait_for_ready_line, args=(self.proc, ready), daemon=True).start()
        assert await asyncio.get_running_loop().run_in_executor(None, ready.wait, 60), "worker did not start"
        return self.proc

    async def __aexit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


class Worker:
    """A `celery -A portal worker -P solo` process on this test database and its own queue."""

    def __init__(self, media: Path, model: Path, log_path: Path, **env: str) -> None:
        self.queue = f"voyager-test-{uuid.uuid4().hex[:8]}"
        environment = {
            **os.environ,
            "DATABASE_URL": child_database_url(),
            "VOYAGER_CELERY_QUEUE": self.queue,
            "VOYAGER_MEDIA_ROOT": str(media),
            "VOYAGER_BASE_MODEL": str(model),
            "VOYAGER_AUTO_PROMOTE": "1",
            "VOYAGER_CANARY": "0",  # these runs check promotion to active; agents_app.canary has its own tests
            "VOYAGER_TRAINING_GATE_SAMPLES": "16",
            "VOYAGER_TRAINING_BUSY_RETRY": "2",
            # The tiny model needs bolder steps than the starter model to move in a few seconds.
            "VOYAGER_TRAINING_SFT_EPOCHS": "8",
            "VOYAGER_TRAINING_SFT_LR": "3e-3",
            # The shipped pipeline's shape: SFT, then KTO on the thumbs.
            "VOYAGER_TRAINING_PREF_EPOCHS": "1",
            "VOYAGER_TRAINING_PREF_LR": "1e-4",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.log_path = log_path
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "portal", "worker", "-P", "solo", "-Q", self.queue, "-l", "info"]
            + ["--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while "ready." not in log_path.read_text():
            assert self.proc.poll() is None, f"the worker exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"the worker did not start:\n{log_path.read_text()}"
            time.sleep(0.2)

    def send(self, task, *args, **kwargs) -> None:
        task.apply_async(args=args, kwargs=kwargs, queue=self.queue)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()

    def forget_queue(self) -> None:
        """Drop this run's queue from Redis (a killed worker's unacknowledged message included)."""
        import redis

        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        client.delete(self.queue, f"_kombu.binding.{self.queue}", f"_kombu.binding_permanent.{self.queue}")
        client.close()

    def output(self) -> str:
        return self.log_path.read_text()[-6000:]


def wait_for(predicate, worker: Worker, timeout: float = 120.0, what: str = "the run"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; worker output:\n{worker.output()}")
