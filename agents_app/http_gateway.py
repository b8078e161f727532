"""The HTTP binding of protocol version 1: the WebSocket's frames, for a mod that has only Luanti's HTTP API.

A *session* stands in for a WebSocket connection. It lives in the Daphne process that opened it,
as an ``HttpGatewaySession`` that runs ``GatewayFrames`` (the WebSocket consumer's own code: the
token bucket, the frame schema, the asks through the worker client, the stored exchanges) on a
channel of its own. A request may land on any Daphne behind the proxy; its view reaches the
session through the channel layer:

- ``POST /http/luanti/session/``: a new session (201, its id); ``DELETE``: its end.
- ``POST /http/luanti/frames/``: frames for the session, one JSON object per line (202).
- ``GET /http/luanti/poll/?after=N``: the frames the gateway sent after number N, at once if there
  are any, else as soon as one comes, else none after ``VOYAGER_HTTP_POLL_SECONDS``.

Frames sent stay in the session's outbox until a poll's ``after`` acknowledges them, so an answer
lost on its way (a poll that timed out as it was answered) is sent again by the next poll.
Where the WebSocket would close with a 4xxx code, the session ends with that code and every request
on it is answered with the HTTP status of the same meaning (``CLOSE_STATUS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import uuid

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.core import signing
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agents_app.consumers import GatewayFrames
from agents_app.protocol import MAX_FRAME_BYTES, CloseCode
from agents_app.services import game_server_authenticate
from inference.client import WorkerAskingMixin

log = logging.getLogger("voyager.gateway")

SESSION_HEADER = "HTTP_X_VOYAGER_SESSION"
SESSION_SALT = "voyager.http-session"
# How long a request waits for the session to take its message: the session answers at once, so
# silence means its process is gone.
ACK_SECONDS = 3.0
# A closed session answers this long with its close code, then is forgotten (410).
CLOSED_LINGER_SECONDS = 10.0
# A mod that polls no more lets frames pile up; past this many unacknowledged, the session ends.
OUTBOX_LIMIT = 2000
TICK_SECONDS = 1.0


class SessionCode:
    """Close codes of the HTTP binding alone (the WebSocket's are ``protocol.CloseCode``)."""

    GONE = 4410  # idle past VOYAGER_HTTP_SESSION_IDLE, fell OUTBOX_LIMIT frames behind, or unknown


# The HTTP status of each close code: a request on a session that ended answers with it.
CLOSE_STATUS = {
    CloseCode.UNAUTHORIZED: 401,
    CloseCode.UNSUPPORTED: 400,
    CloseCode.FRAME_TOO_LARGE: 413,
    CloseCode.FLOOD: 429,
    SessionCode.GONE: 410,
}
CLOSE_MESSAGE = {
    CloseCode.UNAUTHORIZED: "token: bad, missing or disabled, or changed since the session began",
    CloseCode.UNSUPPORTED: "body: frames are UTF-8 text, one JSON object per line",
    CloseCode.FRAME_TOO_LARGE: f"frame: one is larger than {MAX_FRAME_BYTES} bytes; the session is closed",
    CloseCode.FLOOD: "frames: far past the rate budget; the session is closed",
    SessionCode.GONE: "session: unknown, expired or fallen behind; open a new one",
}

_running: set[asyncio.Task] = set()  # the sessions of this process, held so that none is collected


class HttpGatewaySession(GatewayFrames, WorkerAskingMixin, AsyncConsumer):
    """One game server's session: a WebSocket connection's work, its frames out kept in an outbox."""

    binding = "http"

    def __init__(self, server, ready: asyncio.Future) -> None:
        self.initial_server, self.ready = server, ready
        self.outbox: list[tuple[int, dict]] = []
        self.seq = 0
        self.waiter: tuple[dict, int] | None = None  # (the address, after) of the poll held
        self.closed: int | None = None
        self.closed_at = 0.0
        self.last_contact = time.monotonic()
        self.local: asyncio.Queue = asyncio.Queue()

    @classmethod
    async def start(cls, server) -> str:
        """Start a session for ``server`` in this process; its signed id."""
        ready = asyncio.get_running_loop().create_future()
        session = cls(server, ready)
        # A context of its own: the request's (asgiref's executor for this request among it) ends with it.
        task = asyncio.create_task(session.run(), context=contextvars.Context())
        _running.add(task)
        task.add_done_callback(_running.discard)
        channel = await ready
        return signing.dumps({"c": channel, "s": server.pk}, salt=SESSION_SALT)

    async def run(self) -> None:
        ticker = asyncio.create_task(self._tick())
        await self.local.put({"type": "luanti.session.open"})
        try:
            await self({"type": "luanti.http"}, self.local.get, self._no_send)
        except Exception as exc:
            log.exception("the HTTP session of %s failed", getattr(self.server, "name", "?"))
            if not self.ready.done():
                self.ready.set_exception(exc)
        finally:
            ticker.cancel()
            await self.gateway_close()

    async def _no_send(self, message) -> None:  # the session has no ASGI connection of its own
        raise RuntimeError("an HTTP session sends through its outbox")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            await self.local.put({"type": "luanti.session.tick"})

    # --- its own life ----------------------------------------------------------------------------

    async def luanti_session_open(self, message) -> None:
        await self.gateway_open(self.initial_server)
        self.ready.set_result(self.channel_name)
        await self.gateway_ready()

    async def luanti_session_tick(self, message) -> None:
        now = time.monotonic()
        if self.closed is not None:
            if now - self.closed_at > CLOSED_LINGER_SECONDS:
                raise StopConsumer
        elif now - self.last_contact > settings.VOYAGER_HTTP_SESSION_IDLE:
            log.info("closing the HTTP session of %s: no request for a while", self.server.name)
            await self.close(code=SessionCode.GONE)

    async def close(self, code: int) -> None:
        """End the session as the WebSocket would close: asks cancelled, the group left, the code kept."""
        if self.closed is not None:
            return
        self.closed, self.closed_at = code, time.monotonic()
        self.outbox.clear()
        if self.waiter is not None:
            await self._answer_closed(self.waiter[0])
            self.waiter = None
        await self.gateway_close()

    async def send_json(self, payload: dict) -> None:
        if self.closed is not None:
            return
        self.seq += 1
        self.outbox.append((self.seq, payload))
        if len(self.outbox) > OUTBOX_LIMIT:
            log.warning("closing the HTTP session of %s: %d frames not polled", self.server.name, OUTBOX_LIMIT)
            await self.close(code=SessionCode.GONE)
            return
        if self.waiter is not None:
            reply, after = self.waiter
            self.waiter = None
            await self._answer(reply, after)

    # --- what the views ask of it ----------------------------------------------------------------

    def _refuse(self, message) -> bool:
        return message.get("server") != self.server.pk

    async def _to(self, address: dict, payload: dict) -> None:
        """Answer the view that sent ``address`` (its process's mailbox, its request's key)."""
        await self.channel_layer.send(address["reply"], {**payload, "key": address["key"]})

    async def _answer(self, address: dict, after: int) -> None:
        frames = [frame for seq, frame in self.outbox if seq > after]
        await self._to(address, {"type": "poll.answer", "seq": self.seq, "frames": frames})

    async def _answer_closed(self, address: dict, code: int | None = None) -> None:
        await self._to(address, {"type": "session.closed", "code": code or self.closed})

    async def _takes(self, message) -> bool:
        """Whether this session takes a request; a refused or closed one is answered so here."""
        if self._refuse(message):
            await self._answer_closed(message, SessionCode.GONE)
            return False
        if self.closed is not None:
            await self._answer_closed(message)
            return False
        self.last_contact = time.monotonic()
        return True

    async def luanti_frames(self, message) -> None:
        if not await self._takes(message):
            return
        taken = 0
        for text in message["frames"]:
            taken += 1
            if not await self.frame_received(text):
                break
        if self.closed is not None:
            await self._answer_closed(message)
        else:
            await self._to(message, {"type": "frames.taken", "frames": taken})

    async def luanti_refuse(self, message) -> None:
        """A request the view refused for abuse (a body that is not text): the session ends with its code."""
        if not self._refuse(message):
            await self.close(code=message["code"])
        await self._answer_closed(message, message["code"])

    async def luanti_poll(self, message) -> None:
        after = message["after"]
        if not await self._takes(message):
            return
        self.outbox = [(seq, frame) for seq, frame in self.outbox if seq > after]  # acknowledged: gone
        if self.waiter is not None:  # one poll at a time: the newer one takes over
            await self._to(self.waiter[0], {"type": "poll.answer", "seq": self.seq, "frames": []})
            self.waiter = None
        address = {"reply": message["reply"], "key": message["key"]}
        if self.outbox:
            await self._answer(address, after)
        else:
            self.waiter = (address, after)
            await self._to(address, {"type": "poll.held"})

    async def luanti_end(self, message) -> None:
        """The mod ends its session (the server shuts down), as it would close its WebSocket."""
        if self._refuse(message):
            await self._answer_closed(message, SessionCode.GONE)
            return
        await self.close(code=SessionCode.GONE)
        await self._to(message, {"type": "session.ended"})
        raise StopConsumer

    async def luanti_poll_gone(self, message) -> None:
        if self.waiter is not None and self.waiter[0]["key"] == message["key"]:
            self.waiter = None


# --- the views ------------------------------------------------------------------------------------


def closed_response(code: int) -> JsonResponse:
    status = CLOSE_STATUS.get(code, 410)
    response = JsonResponse({"close": code, "message": CLOSE_MESSAGE.get(code, CLOSE_MESSAGE[SessionCode.GONE])})
    response.status_code = status
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="game server"'
    return response


def bad_request(message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": "invalid", "message": message}}, status=400)


async def _server(request):
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return await database_sync_to_async(game_server_authenticate)(token.strip())


def _session_channel(request, server) -> str | None:
    """The session's channel, from its signed id: only an id this platform issued, for this server."""
    try:
        value = signing.loads(request.META.get(SESSION_HEADER, ""), salt=SESSION_SALT)
    except signing.BadSignature:
        return None
    if not isinstance(value, dict) or value.get("s") != server.pk or not isinstance(value.get("c"), str):
        return None
    return value["c"]


class Mailbox:
    """This process's one channel for the sessions' answers to its views, each marked with its request's key.

    One long-lived reader, as a consumer has, rather than a channel per request: an answer that
    comes after its request ended (a poll's timeout, a client gone) is dropped here instead of
    waiting in the layer's buffers for a reader that never comes.
    """

    _current: Mailbox | None = None

    @classmethod
    def here(cls) -> Mailbox:
        layer, loop = get_channel_layer(), asyncio.get_running_loop()
        box = cls._current
        if box is None or box.layer is not layer or box.loop is not loop or box.reader.done():
            box = cls._current = cls(layer, loop)
        return box

    def __init__(self, layer, loop) -> None:
        self.layer, self.loop = layer, loop
        self.channel = ""
        self.opened = loop.create_future()
        self.letters: dict[str, asyncio.Queue] = {}
        self.reader = loop.create_task(self._read(), context=contextvars.Context())

    async def _read(self) -> None:
        # The layer's own prefix: the Redis layer reads all of a process's channels of one prefix
        # from one list, and a second prefix would wait for the first one's read to time out.
        self.channel = await self.layer.new_channel()
        self.opened.set_result(None)
        while True:
            message = await self.layer.receive(self.channel)
            letters = self.letters.get(message.pop("key", None))
            if letters is not None:  # else: an answer to a request that ended (timed out, cancelled)
                letters.put_nowait(message)

    @contextlib.asynccontextmanager
    async def request(self):
        """An address for one request's answers, and the queue they come to."""
        await asyncio.shield(self.opened)
        key = uuid.uuid4().hex
        letters = self.letters[key] = asyncio.Queue()
        try:
            yield {"reply": self.channel, "key": key}, letters
        finally:
            self.letters.pop(key, None)


async def _ask_session(channel: str, message: dict, *, wait: float, held: float = 0.0) -> dict | None:
    """Send ``message`` to the session; its answer (None: the session's process is gone).

    A poll the session holds (``poll.held``) waits ``held`` seconds more for its answer, then is
    answered with no frames; the session is told to stop writing to it.
    """
    layer = get_channel_layer()
    async with Mailbox.here().request() as (address, letters):
        await layer.send(channel, {**message, **address})
        try:
            answer = await asyncio.wait_for(letters.get(), wait)
        except TimeoutError:
            return None
        if answer["type"] != "poll.held":
            return answer
        answered = False
        try:
            answer = await asyncio.wait_for(letters.get(), held)
            answered = True
            return answer
        except TimeoutError:
            return {"type": "poll.answer", "seq": message["after"], "frames": []}
        finally:
            if not answered:  # timed out, or the client went: the session stops writing to this poll
                await layer.send(channel, {"type": "luanti.poll.gone", **address})


async def _authenticated(request):
    """(server, session channel) or the response that refuses the request."""
    server = await _server(request)
    if server is None:
        return None, closed_response(CloseCode.UNAUTHORIZED)
    channel = _session_channel(request, server)
    if channel is None:
        return None, closed_response(SessionCode.GONE)
    return (server, channel), None


@csrf_exempt
@require_http_methods(["POST", "DELETE"])
async def session(request):
    """POST: a new session; DELETE: the end of the one named."""
    if request.method == "DELETE":
        return await session_end(request)
    server = await _server(request)
    if server is None:
        log.info("refused a game-server session: bad or missing token")
        return closed_response(CloseCode.UNAUTHORIZED)
    session = await HttpGatewaySession.start(server)
    return JsonResponse({"session": session, "poll_seconds": settings.VOYAGER_HTTP_POLL_SECONDS}, status=201)


async def session_end(request):
    found, refusal = await _authenticated(request)
    if refusal is not None:
        return refusal
    server, channel = found
    answer = await _ask_session(channel, {"type": "luanti.end", "server": server.pk}, wait=ACK_SECONDS)
    if answer is None or answer["type"] == "session.closed":
        return closed_response(answer["code"] if answer else SessionCode.GONE)
    return JsonResponse({}, status=200)


@csrf_exempt
@require_POST
async def frames(request):
    found, refusal = await _authenticated(request)
    if refusal is not None:
        return refusal
    server, channel = found
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        await _ask_session(
            channel, {"type": "luanti.refuse", "server": server.pk, "code": CloseCode.UNSUPPORTED}, wait=ACK_SECONDS
        )
        return closed_response(CloseCode.UNSUPPORTED)
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return bad_request("body: no frame in it (one JSON object per line)")
    answer = await _ask_session(
        channel, {"type": "luanti.frames", "server": server.pk, "frames": lines}, wait=ACK_SECONDS + 7
    )
    if answer is None or answer["type"] == "session.closed":
        return closed_response(answer["code"] if answer else SessionCode.GONE)
    return JsonResponse({"frames": answer["frames"]}, status=202)


@never_cache
@require_GET
async def poll(request):
    found, refusal = await _authenticated(request)
    if refusal is not None:
        return refusal
    server, channel = found
    after = request.GET.get("after", "0")
    if not after.isdigit():
        return bad_request(f"after: {after[:20]!r} is not a frame number")
    answer = await _ask_session(
        channel,
        {"type": "luanti.poll", "server": server.pk, "after": int(after)},
        wait=ACK_SECONDS,
        held=settings.VOYAGER_HTTP_POLL_SECONDS,
    )
    if answer is None or answer["type"] == "session.closed":
        return closed_response(answer["code"] if answer else SessionCode.GONE)
    return JsonResponse({"seq": answer["seq"], "frames": answer["frames"]})
