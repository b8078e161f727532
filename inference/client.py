"""Asking the inference workers: the one place that speaks the worker protocol from the web side.

A consumer (the game gateway, the browser playground) owns one ``WorkerClient``
for its socket. ``send`` puts a request on the workers' channel, the consumer's
``inference_*`` handlers hand each worker message to ``handle``, and the client
calls the consumer back with the ask's deltas, its result or its error. It
also watches what it has sent: an ask past its deadline is cancelled and
answered ``timeout``, and one whose worker stopped beating (or that no living
worker took) is answered ``unavailable``.

The message formats are ``inference.worker``'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from inference.heartbeat import heartbeats
from inference.worker import REQUEST_CHANNEL, WORKERS_GROUP

log = logging.getLogger("voyager.worker_client")

# How often an ask in flight is checked against its deadline and its worker's heartbeat.
WATCH_INTERVAL = 0.25
# How long an ask stays lost before it is answered unavailable: a draining worker forgets its
# heartbeat right after sending its last messages, which may still be on their way to us.
LOST_GRACE = 1.0
# A worker's error codes that a client of ours understands as they are; any other becomes "internal".
PASSED_ON = frozenset({"invalid", "overloaded", "unavailable", "timeout", "internal"})


def protocol_code(worker_code: str | None) -> str:
    """The client-facing code for a worker's error code ("adapter_error" and the like are internal)."""
    return worker_code if worker_code in PASSED_ON else "internal"


_live_cache: tuple[float, list[str]] = (0.0, [])


async def live_workers(*, fresh: bool = False) -> list[str]:
    """Ids of living workers, asked of the heartbeat store at most every WATCH_INTERVAL per process.

    Only good news is taken from the cache: pass ``fresh`` before acting on bad news.
    """
    global _live_cache
    stamp, workers = _live_cache
    if fresh or time.monotonic() - stamp > WATCH_INTERVAL:
        workers = await heartbeats().alive()
        _live_cache = (time.monotonic(), workers)
    return workers


@dataclass(eq=False)
class WorkerAsk:
    """One request in flight: the caller's key for it and what it carries along (``meta``)."""

    key: str
    meta: Any
    started: float
    deadline: float
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    worker_id: str | None = None
    worker_channel: str | None = None
    first_delta: float | None = None
    workers_at_send: frozenset[str] = frozenset()
    lost_since: float | None = None
    done: bool = False


DeltaHandler = Callable[[WorkerAsk, str], Awaitable[None]]
ResultHandler = Callable[[WorkerAsk, dict[str, Any]], Awaitable[None]]
ErrorHandler = Callable[[WorkerAsk, str, str], Awaitable[None]]


class NoWorker(Exception):
    """No inference worker is alive to take a request."""


class WorkerClient:
    def __init__(
        self,
        channel_layer,
        reply_channel: str,
        *,
        on_delta: DeltaHandler,
        on_result: ResultHandler,
        on_error: ErrorHandler,
    ) -> None:
        self.layer = channel_layer
        self.reply_channel = reply_channel
        self.on_delta, self.on_result, self.on_error = on_delta, on_result, on_error
        self.asks: dict[str, WorkerAsk] = {}  # by the caller's key
        self._by_request: dict[str, WorkerAsk] = {}
        self._watchdog: asyncio.Task | None = None

    def __len__(self) -> int:
        return len(self.asks)

    def __contains__(self, key: str) -> bool:
        return key in self.asks

    async def send(self, key: str, request: dict[str, Any], *, timeout: float, meta: Any = None, started=None):
        """Send ``request`` (the ``inference.request`` fields a worker needs, less the routing ones).

        Raises ``NoWorker`` when no worker is alive (nothing is sent then).
        """
        if not await live_workers() and not await live_workers(fresh=True):
            raise NoWorker("no inference worker is running")
        started = time.monotonic() if started is None else started
        ask = WorkerAsk(
            key=key,
            meta=meta,
            started=started,
            deadline=started + timeout,
            workers_at_send=frozenset(await live_workers()),
        )
        self.asks[key] = ask
        self._by_request[ask.request_id] = ask
        await self.layer.send(
            REQUEST_CHANNEL,
            {
                "type": "inference.request",
                **request,
                "request_id": ask.request_id,
                "reply_channel": self.reply_channel,
                "deadline": time.time() + max(0.0, ask.deadline - time.monotonic()),
            },
        )
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch())
        return ask

    async def send_batch(
        self, items: list[tuple[str, dict[str, Any], Any]], *, timeout: float, started=None
    ) -> list[WorkerAsk]:
        """Send several requests (``(key, request, meta)`` each) as one ``inference.batch`` message:
        one worker takes them all and submits them together, so its engine runs them in one batch
        (an arena battle's two versions). Raises ``NoWorker`` like ``send``."""
        if not await live_workers() and not await live_workers(fresh=True):
            raise NoWorker("no inference worker is running")
        started = time.monotonic() if started is None else started
        workers = frozenset(await live_workers())
        asks, requests = [], []
        for key, request, meta in items:
            ask = WorkerAsk(key=key, meta=meta, started=started, deadline=started + timeout, workers_at_send=workers)
            self.asks[key] = ask
            self._by_request[ask.request_id] = ask
            asks.append(ask)
            requests.append({**request, "request_id": ask.request_id, "reply_channel": self.reply_channel})
        deadline = time.time() + max(0.0, started + timeout - time.monotonic())
        await self.layer.send(
            REQUEST_CHANNEL,
            {"type": "inference.batch", "requests": [{**r, "deadline": deadline} for r in requests]},
        )
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch())
        return asks

    async def cancel(self, key: str) -> WorkerAsk | None:
        """Drop the ask: nothing more of it reaches the caller, and its worker stops on it."""
        ask = self.asks.get(key)
        if ask is None:
            return None
        self._finish(ask)
        cancel = {"type": "inference.cancel", "request_id": ask.request_id}
        if ask.worker_channel:
            await self.layer.send(ask.worker_channel, cancel)
        else:  # not accepted yet: whichever worker takes it must drop it
            await self.layer.group_send(WORKERS_GROUP, cancel)
        return ask

    async def close(self) -> None:
        """The socket is gone: cancel everything in flight."""
        for key in list(self.asks):
            await self.cancel(key)
        if self._watchdog is not None:
            self._watchdog.cancel()

    async def handle(self, message: dict[str, Any]) -> None:
        """A worker's message for this client (``inference.accepted``, ``delta``, ``result``, ``error``)."""
        ask = self._by_request.get(message.get("request_id"))
        if ask is None or ask.done:
            return  # cancelled, timed out, or never ours
        if ask.worker_channel is None and message.get("worker_channel"):
            # Said by ``accepted``, or by the first message after it when they travel together.
            ask.worker_id, ask.worker_channel = message.get("worker_id"), message["worker_channel"]
        kind = message.get("type")
        if kind == "inference.delta":
            if message.get("text"):
                if ask.first_delta is None:
                    ask.first_delta = time.monotonic()
                await self.on_delta(ask, message["text"])
        elif kind == "inference.result":
            self._finish(ask)
            await self.on_result(ask, {**message, "worker_id": message.get("worker_id") or ask.worker_id or ""})
        elif kind == "inference.error":
            self._finish(ask)
            await self.on_error(ask, protocol_code(message.get("code")), message.get("message") or "inference failed")

    def _finish(self, ask: WorkerAsk) -> None:
        ask.done = True
        self.asks.pop(ask.key, None)
        self._by_request.pop(ask.request_id, None)

    @staticmethod
    def _lost(ask: WorkerAsk, alive: set[str]) -> bool:
        """Its worker died, or (not yet accepted) a worker alive when it was sent died since: the
        dying worker may have taken it off the channel, and nobody will ever answer."""
        if ask.worker_id is not None:
            return ask.worker_id not in alive
        if not alive:
            return True
        return time.monotonic() - ask.started > 1.0 and bool(ask.workers_at_send - alive)

    async def _watch(self) -> None:
        while self.asks:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                await self._check()
            except Exception:  # a task of its own: nobody else would hear of it
                log.exception("watching the asks in flight failed")

    async def _check(self) -> None:
        alive = set(await live_workers())
        now = time.monotonic()
        for ask in list(self.asks.values()):
            if ask.done:
                continue
            if now > ask.deadline:
                await self.cancel(ask.key)
                await self.on_error(ask, "timeout", "no reply within the deadline")
                continue
            if not self._lost(ask, alive):
                ask.lost_since = None
                continue
            alive = set(await live_workers(fresh=True))
            if not self._lost(ask, alive):
                ask.lost_since = None
            elif ask.lost_since is None:
                ask.lost_since = now
            elif now - ask.lost_since >= LOST_GRACE and not ask.done:
                await self.cancel(ask.key)
                await self.on_error(ask, "unavailable", "the inference worker stopped answering")


class WorkerAskingMixin:
    """For a Channels consumer that asks the workers: its ``WorkerClient``, and the worker's messages routed to it.

    Call ``worker_open`` in ``connect`` (after ``accept``: an embedded worker loading a real model
    outlasts a client's handshake timeout) and ``worker_close`` in ``disconnect``. The consumer
    defines ``ask_result``; deltas and errors go to the socket as protocol frames.
    """

    worker: WorkerClient | None = None

    async def worker_open(self) -> None:
        from django.conf import settings

        from inference.worker import ensure_embedded_worker

        self.worker = WorkerClient(
            self.channel_layer,
            self.channel_name,
            on_delta=self.ask_delta,
            on_result=self.ask_result,
            on_error=self.ask_error,
        )
        if settings.VOYAGER_EMBEDDED_WORKER:
            await ensure_embedded_worker()  # the frames that arrive meanwhile wait for connect to return

    async def worker_close(self) -> None:
        if self.worker is not None:
            await self.worker.close()

    async def inference_accepted(self, message) -> None:
        await self.worker.handle(message)

    inference_delta = inference_result = inference_error = inference_accepted

    async def send_json(self, payload: dict) -> None:
        await self.send(text_data=json.dumps(payload, separators=(",", ":")))

    async def send_error(self, code: str, message: str, frame_id: str | None = None) -> None:
        payload = {"type": "error", "code": code, "message": message}
        if frame_id is not None:
            payload["id"] = frame_id
        await self.send_json(payload)

    async def ask_delta(self, ask: WorkerAsk, text: str) -> None:
        await self.send_json({"type": "delta", "id": ask.key, "text": text})

    async def ask_error(self, ask: WorkerAsk, code: str, message: str) -> None:
        await self.send_error(code, message, ask.key)

    async def ask_result(self, ask: WorkerAsk, result: dict[str, Any]) -> None:
        raise NotImplementedError
