"""Request bodies are bounded before they are buffered, under every server that runs ``portal.asgi``.

Django's ASGI handler reads the whole body (into a spooled temporary file) before any view runs,
and Daphne receives the whole body and queues it, in memory, before it starts the application; a
view's own checks come too late for a large body. Two guards decide the same way:

- ``BodyLimit`` wraps the HTTP application. A declared Content-Length over the URL's limit is
  answered 413 without a byte read; a body without a length (chunked), or one longer than it said,
  is counted as it arrives and cut off at the limit, with a 413; an upload with no valid
  credentials is refused (401 in the API, the login page otherwise) before its body is read.
- ``install_daphne_guard`` gives Daphne's request the same checks as soon as the headers are in,
  so that Daphne too stops a body at the limit instead of holding it whole.

The limits: ``VOYAGER_MAX_UPLOAD_BYTES`` on the two upload URLs, ``VOYAGER_HTTP_MAX_BODY_BYTES`` on
the game gateway's HTTP frames, ``VOYAGER_MAX_REQUEST_BYTES`` on every other URL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from importlib import import_module
from urllib.parse import unquote

from django.conf import settings
from django.urls import Resolver404, resolve

UPLOAD_URL_NAMES = frozenset({"adapter-upload", "api-adapter-upload"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
HTTP_FRAMES_PATH = "/http/luanti/frames/"


def is_upload_url(path: str) -> bool:
    try:
        return resolve(path).url_name in UPLOAD_URL_NAMES
    except Resolver404:
        return False


def body_limit(path: str) -> int:
    if is_upload_url(path):
        return settings.VOYAGER_MAX_UPLOAD_BYTES
    if path == HTTP_FRAMES_PATH:  # the gateway's HTTP binding: frames of 16 KiB at most
        return settings.VOYAGER_HTTP_MAX_BODY_BYTES
    return settings.VOYAGER_MAX_REQUEST_BYTES


# --- refusals ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def http11(self) -> bytes:
        """The whole response, for a server that writes it to the socket itself."""
        lines = [f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}".encode()]
        lines += [name + b": " + value for name, value in self.headers]
        lines += [b"Content-Length: " + str(len(self.body)).encode(), b"Connection: close"]
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


def _is_api(path: str) -> bool:
    return path.startswith("/api/")


def _error(path: str, status: int, code: str, message: str, headers=()) -> Refusal:
    if _is_api(path):
        from portal.api.errors import error_payload

        body = json.dumps(error_payload(code, message)).encode()
        return Refusal(status, ((b"Content-Type", b"application/json"), *headers), body)
    return Refusal(status, ((b"Content-Type", b"text/plain; charset=utf-8"), *headers), message.encode() + b"\n")


def too_large(path: str, limit: int) -> Refusal:
    what = "files: the upload" if is_upload_url(path) else "request body: it"
    return _error(path, 413, "too_large", f"{what} is over the {limit} byte limit")


def not_authenticated(path: str) -> Refusal:
    if _is_api(path):
        return _error(
            path,
            401,
            "not_authenticated",
            "Authentication credentials were not provided.",
            headers=((b"WWW-Authenticate", b"Token"),),
        )
    from django.contrib.auth.views import redirect_to_login

    location = redirect_to_login(path)["Location"]
    return Refusal(302, ((b"Location", location.encode("latin-1")),), b"")


def _cookie(headers: dict[bytes, bytes], name: str) -> str:
    try:
        morsel = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1")).get(name)
    except CookieError:
        return ""
    return morsel.value if morsel else ""


def has_credentials(headers: dict[bytes, bytes]) -> bool:
    """Whether the request carries any credentials at all (checked for validity later)."""
    return bool(headers.get(b"authorization", b"").strip()) or bool(_cookie(headers, settings.SESSION_COOKIE_NAME))


def credentials_valid(headers: dict[bytes, bytes]) -> bool:
    """Whether the request's token or session names a user (the database is asked; no body is read)."""
    scheme, _, key = headers.get(b"authorization", b"").decode("latin-1").strip().partition(" ")
    if scheme.lower() == "token" and key.strip():
        from rest_framework.authtoken.models import Token

        return Token.objects.filter(key=key.strip(), user__is_active=True).exists()
    session_key = _cookie(headers, settings.SESSION_COOKIE_NAME)
    if session_key:
        from django.contrib.auth import SESSION_KEY

        return bool(import_module(settings.SESSION_ENGINE).SessionStore(session_key).get(SESSION_KEY))
    return False


def refuse_before_body(*, method: str, path: str, headers: dict[bytes, bytes], length: int | None) -> Refusal | None:
    """What to answer from the headers alone: too large for this URL, or an upload with no credentials."""
    limit = body_limit(path)
    if length is not None and length > limit:
        return too_large(path, limit)
    if method in BODY_METHODS and is_upload_url(path) and not has_credentials(headers):
        return not_authenticated(path)
    return None


def _content_length(headers: dict[bytes, bytes]) -> int | None:
    value = headers.get(b"content-length", b"").strip()
    return int(value) if value.isdigit() else None


# --- the ASGI application ------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware for HTTP: bodies past the URL's limit are never read, only refused."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from channels.db import database_sync_to_async

        path = scope["path"].removeprefix(scope.get("root_path", "")) or "/"
        headers = {name.lower(): value for name, value in scope.get("headers", [])}
        method = scope.get("method", "GET")
        refusal = refuse_before_body(method=method, path=path, headers=headers, length=_content_length(headers))
        needs_login = refusal is None and method in BODY_METHODS and is_upload_url(path)
        if needs_login and not await database_sync_to_async(credentials_valid)(headers):
            refusal = not_authenticated(path)
        if refusal is not None:
            return await _answer(send, refusal)

        limit = body_limit(path)
        state = {"received": 0, "cut": False, "started": False}

        async def limited_receive():
            if state["cut"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    # The application sees the client go; it has sent nothing, so the 413 is ours to send.
                    state["cut"] = True
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, limited_receive, tracking_send)
        if state["cut"] and not state["started"]:
            await _answer(send, too_large(path, limit))


async def _answer(send, refusal: Refusal) -> None:
    headers = [(name.lower(), value) for name, value in refusal.headers]
    headers += [(b"content-length", str(len(refusal.body)).encode()), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": refusal.body})


# --- Daphne --------------------------------------------------------------------------------------


def install_daphne_guard() -> None:
    """Make Daphne's HTTP request refuse and stop a body as ``BodyLimit`` would, before it holds it.

    Daphne (``daphne ...`` in production, ``manage.py runserver`` in the embedded default) receives a
    body whole, then queues all of it for the application: by the time ``BodyLimit`` runs, the memory
    is spent. Its request class is swapped for one that decides when the headers are in (Content-Length,
    credentials) and counts the body as it arrives; a refusal is written and the connection closed.
    Credentials are only checked for presence here (no database on the reactor); ``BodyLimit`` checks them.
    """
    try:
        from daphne import http_protocol
    except ImportError:  # another server: BodyLimit alone
        return
    if getattr(http_protocol.WebRequest, "voyager_guarded", False):
        return

    class GuardedWebRequest(http_protocol.WebRequest):
        voyager_guarded = True
        _refused = False
        _limit: int | None = None
        _received = 0
        _guard_path = "/"

        def gotLength(self, length):  # noqa: N802 (Twisted's name)
            raw = getattr(self.channel, "_path", b"/")  # the request line, kept by the channel until the body is in
            method = getattr(self.channel, "_command", b"GET").decode("latin-1")
            path = unquote(raw.split(b"?", 1)[0].decode("latin-1"))
            headers = {name.lower(): values[-1] for name, values in self.requestHeaders.getAllRawHeaders()}
            self._guard_path = path
            refusal = refuse_before_body(method=method, path=path, headers=headers, length=length)
            if refusal is not None:
                return self._refuse(refusal)
            self._limit = body_limit(path)
            return super().gotLength(length)

        def handleContentChunk(self, data):  # noqa: N802
            if self._refused:
                return None
            self._received += len(data)
            if self._limit is not None and self._received > self._limit:
                return self._refuse(too_large(self._guard_path, self._limit))
            return super().handleContentChunk(data)

        def requestReceived(self, command, path, version):  # noqa: N802
            if not self._refused:
                super().requestReceived(command, path, version)

        def _refuse(self, refusal: Refusal) -> None:
            self._refused = True
            self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after the answer
            if self.content is not None:
                self.content.close()
            self.channel.transport.write(refusal.http11())
            self.channel.loseConnection()

    http_protocol.WebRequest = GuardedWebRequest  # HTTPFactory.buildProtocol looks the class up on each connection
