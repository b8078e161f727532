"""Request bodies over their URL's limit are refused, or cut off, before anything buffers them.

Two ways in: the ASGI application itself, driven with a receive() that counts what is taken from it,
and real servers on a socket (Daphne, as in production, and `manage.py runserver`, the embedded
default), whose memory is watched while a client streams more than the limit.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import subprocess
import sys
import time

import pytest

from tests.processes import ROOT, child_env, free_port, tail

CHUNK = 64 * 1024
UPLOAD_API = "/api/personas/miner/adapter-versions/"
UPLOAD_PAGE = "/personas/miner/upload/"


class Body:
    """An ASGI receive(): ``chunks`` chunks of body, counting how many the application took."""

    def __init__(self, chunks: int, size: int = CHUNK):
        self.chunks, self.size, self.taken = chunks, size, 0

    async def __call__(self):
        if self.taken >= self.chunks:
            await asyncio.sleep(3600)  # the body is over; the client stays until the answer
        self.taken += 1
        return {"type": "http.request", "body": b"\0" * self.size, "more_body": self.taken < self.chunks}


async def call(path: str, body: Body, method: str = "POST", **headers: str):
    from portal.asgi import application

    sent = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")] + [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    await asyncio.wait_for(application(scope, body, send), 60)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, content


@pytest.fixture
async def close_thread_connections():
    """The database connections the checks and views opened in the sync thread close with the test."""
    yield
    from asgiref.sync import sync_to_async
    from django.db import connections

    await sync_to_async(connections.close_all)()


@pytest.fixture
def small_limits(settings):
    settings.VOYAGER_MAX_UPLOAD_BYTES = 1 << 20
    settings.VOYAGER_MAX_REQUEST_BYTES = 256 * 1024


async def test_an_upload_that_declares_more_than_the_limit_is_refused_before_a_byte_is_read(small_limits):
    body = Body(chunks=32)
    status, headers, content = await call(
        UPLOAD_API, body, content_length=str(200 << 20), authorization="Token x", content_type="multipart/form-data"
    )
    assert status == 413 and body.taken == 0
    error = json.loads(content)["error"]
    assert error["code"] == "too_large" and "1048576 byte limit" in error["message"]


async def test_a_body_without_a_length_is_cut_off_at_the_limit_not_drained(small_limits):
    body = Body(chunks=64)  # 4 MiB, where 256 KiB is the limit of this URL
    status, _, content = await call("/api/ratings/", body, content_type="application/json")
    assert status == 413 and json.loads(content)["error"]["code"] == "too_large"
    assert body.taken <= 256 * 1024 // CHUNK + 1


async def test_a_page_post_over_the_limit_is_refused_too(small_limits):
    body = Body(chunks=64)
    status, headers, content = await call("/replies/x/rate/", body, content_type="application/x-www-form-urlencoded")
    assert status == 413 and b"262144 byte limit" in content and headers["content-type"].startswith("text/plain")
    assert body.taken <= 256 * 1024 // CHUNK + 1


async def test_an_anonymous_upload_is_refused_before_its_body_is_read(small_limits):
    body = Body(chunks=8)
    status, headers, content = await call(UPLOAD_API, body, content_length=str(8 * CHUNK))
    assert status == 401 and headers["www-authenticate"] == "Token" and body.taken == 0
    assert json.loads(content)["error"]["code"] == "not_authenticated"
    status, headers, _ = await call(UPLOAD_PAGE, body, content_length=str(8 * CHUNK))
    assert status == 302 and headers["location"] == f"/accounts/login/?next={UPLOAD_PAGE}" and body.taken == 0


@pytest.mark.django_db(transaction=True)  # the check asks the database from another thread
async def test_a_token_that_names_no_one_is_anonymous_for_an_upload(small_limits, close_thread_connections):
    body = Body(chunks=8)
    status, headers, _ = await call(UPLOAD_API, body, content_length=str(8 * CHUNK), authorization="Token nope")
    assert status == 401 and headers["www-authenticate"] == "Token" and body.taken == 0


@pytest.mark.django_db(transaction=True)
async def test_a_modder_with_a_token_gets_through_within_the_limit_and_is_cut_off_past_it(
    small_limits, close_thread_connections
):
    from asgiref.sync import sync_to_async
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    @sync_to_async
    def token() -> str:
        alice = get_user_model().objects.create_user("alice", "", "alice-password-1")
        return Token.objects.create(user=alice).key

    key = await token()
    body = Body(chunks=4)  # 256 KiB of nothing: not multipart, but under the limit
    status, _, content = await call(UPLOAD_API, body, authorization=f"Token {key}", content_type="multipart/form-data")
    assert body.taken == 4 and status not in (401, 413), content[:300]
    body = Body(chunks=64)  # 4 MiB, over the 1 MiB of an upload
    status, _, _ = await call(UPLOAD_API, body, authorization=f"Token {key}", content_type="multipart/form-data")
    assert status == 413 and body.taken <= (1 << 20) // CHUNK + 1


# --- real servers -----------------------------------------------------------------------------------


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))


def reset_peak_rss(pid: int) -> None:
    """From here on, VmHWM is the peak since now (not the start-up's)."""
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")


def _wait_until_serving(proc, port: int, log_path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, tail(log_path)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the server did not start:\n{tail(log_path)}")


@pytest.fixture(params=["daphne", "runserver"])
def server(request, tmp_path):
    """Production's server (Daphne) or the embedded default's (manage.py runserver, Daphne's), limits 1 MiB."""
    port = free_port()
    env = child_env(
        {
            "VOYAGER_VAR_DIR": str(tmp_path / "var"),
            "VOYAGER_MAX_UPLOAD_BYTES": str(1 << 20),
            "VOYAGER_EMBEDDED_WORKER": "0",
        }
    )
    for name in ("DATABASE_URL", "REDIS_URL"):  # SQLite under tmp_path: nothing here needs a shared database
        env.pop(name, None)
    if request.param == "daphne":
        cmd = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "portal.asgi:application"]
    else:
        cmd = [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_serving(proc, port, log_path)
        yield port, proc.pid
    finally:
        proc.kill()
        proc.wait()


def _head(path: str, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def test_the_server_refuses_a_declared_oversize_upload_without_waiting_for_its_body(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(UPLOAD_API, Content_Length=str(200 << 20), Authorization="Token x"))
        answer = _answer(sock)  # no body sent: a server waiting for one would never answer
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]


def test_the_server_refuses_an_anonymous_upload_without_waiting_for_its_body(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(UPLOAD_API, Content_Length="4096"))
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 401") and b"WWW-Authenticate: Token" in answer, answer[:300]


def test_the_server_stops_a_streamed_upload_at_the_limit_without_holding_it(server):
    port, pid = server
    reset_peak_rss(pid)
    before = peak_rss_kib(pid)
    sent, answer = 0, b""
    chunk = b"%x\r\n%s\r\n" % (CHUNK, b"\0" * CHUNK)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(UPLOAD_API, Transfer_Encoding="chunked", Authorization="Token x"))
        try:
            while sent < 48 << 20:  # 48 MiB offered, where 1 MiB is the limit
                sock.sendall(chunk)
                sent += CHUNK
                if select.select([sock], [], [], 0)[0]:
                    break  # the server has answered
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _answer(sock)
    grown_mib = (peak_rss_kib(pid) - before) / 1024
    assert answer.startswith(b"HTTP/1.1 413"), (answer[:300], sent)
    assert sent < 24 << 20, f"the client could send {sent >> 20} MiB"  # 1 MiB read, the rest in socket buffers
    assert grown_mib < 16, f"the server's peak memory grew {grown_mib:.0f} MiB"
    assert os.path.exists(f"/proc/{pid}")
