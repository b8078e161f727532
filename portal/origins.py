"""Which web pages may open a browser WebSocket: the site's own origin and ``CSRF_TRUSTED_ORIGINS``.

A browser sends its cookies with any WebSocket, whichever site's page opens it, so a session-authenticated
socket must check the page's ``Origin``. Channels' ``AllowedHostsOriginValidator`` compares host names
only: a page on another port or scheme of an allowed host (another service on the same machine) passed.
Here an origin is its scheme, host and port (default ports filled in), compared whole.

The site's own origin is the handshake's ``Host`` (only if it is in ``ALLOWED_HOSTS``, so a rebound DNS
name does not make itself "same origin") with the scheme the request came in on (``wss``, or
``SECURE_PROXY_SSL_HEADER`` from a TLS-terminating proxy, as Django decides ``request.is_secure()``).
The game gateway (``/ws/luanti/``) is not behind this: game servers are not browsers and send a token.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host

ORIGIN_REFUSED = 4403  # the close code of a browser socket from a page of another origin (or none)
DEFAULT_PORTS = {"http": 80, "https": 443}


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int


def parse_origin(value: str) -> Origin | None:
    """``scheme://host[:port]`` as an Origin, or None for anything else ("null", no host, a bad port)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.username is not None or parts.password:
        return None
    return Origin(scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme])


def _headers(scope) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers", [])}


def _is_secure(scope, headers: dict[bytes, bytes]) -> bool:
    if scope.get("scheme") in ("wss", "https"):
        return True
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        name, expected = proxy
        header = name.removeprefix("HTTP_").lower().replace("_", "-").encode("latin1")
        return headers.get(header, b"").decode("latin1").split(",")[0].strip() == expected
    return False


def _allowed_hosts() -> list[str]:
    hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not hosts:
        return [".localhost", "127.0.0.1", "[::1]"]  # what Django's request.get_host() accepts then
    return hosts


def own_origin(scope) -> Origin | None:
    """The origin the handshake was addressed to, if its host is one this site serves."""
    headers = _headers(scope)
    host = headers.get(b"host", b"")
    if settings.USE_X_FORWARDED_HOST and b"x-forwarded-host" in headers:
        host = headers[b"x-forwarded-host"].split(b",")[0].strip()
    host = host.decode("latin1")
    domain, _port = split_domain_port(host)
    if not domain or not validate_host(domain, _allowed_hosts()):
        return None
    return parse_origin(f"{'https' if _is_secure(scope, headers) else 'http'}://{host}")


def _trusted(origin: Origin) -> bool:
    for entry in settings.CSRF_TRUSTED_ORIGINS:
        wildcard = "://*." in entry
        trusted = parse_origin(entry.replace("://*.", "://", 1) if wildcard else entry)
        if trusted is None or (trusted.scheme, trusted.port) != (origin.scheme, origin.port):
            continue
        if origin.host == trusted.host or (wildcard and origin.host.endswith("." + trusted.host)):
            return True
    return False


def origin_allowed(scope) -> bool:
    """True when the handshake's Origin is the site's own or a trusted one; a missing Origin is refused."""
    raw = _headers(scope).get(b"origin")
    origin = parse_origin(raw.decode("latin1")) if raw else None
    if origin is None:
        return False
    return origin == own_origin(scope) or _trusted(origin)


class BrowserOriginValidator:
    """ASGI middleware for browser WebSocket routes: a handshake from another origin is refused (4403)."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            raise ValueError("BrowserOriginValidator guards WebSocket routes only")
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        message = await receive()  # websocket.connect
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.close", "code": ORIGIN_REFUSED})
