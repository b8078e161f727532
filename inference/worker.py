"""The inference worker: reads requests from the channel layer, streams results back.

Any number of workers read the same request channel, so load spreads by
itself. Each stamps a heartbeat (``inference.heartbeat``) so the gateway can
tell a request with no living worker ``unavailable`` at once, and notice a
worker that died mid-stream.

Messages (all dicts with ``type``):

gateway → ``REQUEST_CHANNEL``
    ``inference.request`` {request_id, reply_channel, persona{slug, name, system_prompt,
    traits, allowed_actions, temperature, top_p, repetition_penalty}, adapter{id, version, path,
    sha256}|None, memory[{player, text, reply}], context{}, player, text, max_tokens, deadline (unix time), seed?}
    ``inference.batch`` {requests: [inference.request fields...]}   (one worker takes them all and
    submits them together, so they run in one engine batch: an arena battle's two versions)
worker → reply_channel
    ``inference.accepted`` {request_id, worker_id, worker_channel}
    ``inference.delta`` {request_id, text}            (several tokens per message under load)
    ``inference.result`` {request_id, text, raw_text, actions, adapter_id, prompt,
    prompt_tokens, completion_tokens, ttft_ms, total_ms, finish_reason, base_model_id, worker_id,
    worker_channel}
    Messages that are ready together go together: ``accepted`` rides on the first delta
    (which then carries worker_id and worker_channel), and a request finished before
    anything of it was sent is its result alone.
    ``inference.error`` {request_id, code, message}
gateway → worker_channel
    ``inference.cancel`` {request_id}
anyone → group ``WORKERS_GROUP``
    ``inference.adapter_activated`` {adapter{...}}     (warm the new version's weights)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from typing import Any

from inference import heartbeat
from inference.backends import Backend, Overloaded

log = logging.getLogger("voyager.worker")

REQUEST_CHANNEL = "inference.requests"
WORKERS_GROUP = "inference.workers"
TERMINAL = {"inference.result", "inference.error"}


def _coalesce(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fewer messages for the same stream, keeping every request's order intact.

    Consecutive deltas of a request merge into one; an ``accepted`` rides on the request's
    first delta; and a request accepted, streamed and finished within one batch (an instant
    backend, a short reply) is its result alone: the result has the whole text, and the
    protocol allows a reply with no delta before it.
    """
    out: list[dict[str, Any]] = []
    open_delta: dict[str, dict[str, Any]] = {}
    fresh: dict[str, int] = {}  # request id → slot in ``out`` of its one event so far, if accepted in this batch
    for event in events:
        rid, kind = event["request_id"], event["type"]
        if kind == "inference.accepted":
            fresh[rid] = len(out)
            out.append(dict(event))
            continue
        if kind == "inference.delta":
            if rid in open_delta:
                open_delta[rid]["text"] += event["text"]
                continue
            event = dict(event)
            slot = fresh.get(rid)
            if slot is not None and out[slot]["type"] == "inference.accepted":
                event["worker_id"], event["worker_channel"] = out[slot]["worker_id"], out[slot]["worker_channel"]
                out[slot] = event
            else:
                out.append(event)
            open_delta[rid] = event
            continue
        open_delta.pop(rid, None)
        slot = fresh.pop(rid, None)
        if slot is not None:
            out[slot] = dict(event)
        else:
            out.append(event)
    return out


class InferenceWorker:
    def __init__(
        self,
        backend: Backend,
        *,
        layer=None,
        heartbeats=None,
        worker_id: str | None = None,
        drain_timeout: float = 120.0,
    ) -> None:
        from channels.layers import get_channel_layer

        self.backend = backend
        self.layer = layer or get_channel_layer()
        self.heartbeats = heartbeats or heartbeat.heartbeats()
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.routes: dict[str, str] = {}
        self.started = asyncio.Event()
        self.stopping = asyncio.Event()
        self.worker_channel = ""
        self.served = 0
        self.drain_timeout = drain_timeout
        self._cancelled_early: deque[str] = deque(maxlen=1000)
        self._held: dict[str, str] = {}  # delta text a full reply channel could not take yet
        self.completion_tokens = 0
        self._rate_mark = (time.monotonic(), 0)  # (when, completion_tokens then): tokens per second

    # The engine thread hands events to the loop; the sender sends them in order.
    def _emit(self, event: dict[str, Any]) -> None:
        if threading.get_ident() == self._loop_thread:  # a backend that answered inside submit()
            self._outbox.put_nowait(event)
        else:
            self._loop.call_soon_threadsafe(self._outbox.put_nowait, event)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._outbox: asyncio.Queue = asyncio.Queue()
        # The default prefix: channels-redis multiplexes one process-local prefix per layer, and
        # a second one would make every receive here wait out the other's blocking pop.
        self.worker_channel = await self.layer.new_channel()
        await self.layer.group_add(WORKERS_GROUP, self.worker_channel)
        await self.heartbeats.beat(self.worker_id, self.stats())
        tasks = [
            asyncio.create_task(self._beat_forever()),
            asyncio.create_task(self._send_forever()),
            asyncio.create_task(self._control_forever()),
        ]
        self.started.set()
        log.info("worker %s reading %s", self.worker_id, REQUEST_CHANNEL)
        try:
            await self._receive_until_stopped()
            log.info("worker %s draining %d running requests", self.worker_id, len(self.routes))
            await self._loop.run_in_executor(None, lambda: self.backend.stop(drain=True))
            give_up = time.monotonic() + self.drain_timeout
            while self.routes and time.monotonic() < give_up:
                await asyncio.sleep(0.02)
            # A finished request leaves the routes before its result is sent: wait for the sender too.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), max(0.1, give_up - time.monotonic()))
            for rid, reply in list(self.routes.items()):
                await self._send(reply, _error(rid, "unavailable", "the worker shut down before finishing"))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=1.0)
            await self.heartbeats.forget(self.worker_id)
            await self.layer.group_discard(WORKERS_GROUP, self.worker_channel)
            log.info("worker %s stopped after %d requests", self.worker_id, self.served)

    def stop(self) -> None:
        """Take no new requests; finish the running ones (what SIGTERM does)."""
        self.stopping.set()

    def stats(self) -> dict[str, Any]:
        """The numbers this worker puts in its heartbeat, exported by the web processes as metrics."""
        engine_stats = {}
        # The local engine counts its own queue; a backend without one (the OpenAI client) may count its asks.
        engine = getattr(self.backend, "engine", None) or self.backend
        if hasattr(engine, "stats"):
            try:
                engine_stats = engine.stats()
            except Exception:  # numbers are a courtesy; never let them stop a beat
                engine_stats = {}
        now = time.monotonic()
        then, tokens_then = self._rate_mark
        rate = (self.completion_tokens - tokens_then) / (now - then) if now - then > 0 else 0.0
        if now - then >= heartbeat.INTERVAL:
            self._rate_mark = (now, self.completion_tokens)
        return {
            "queue_depth": engine_stats.get("waiting", 0),
            "running": engine_stats.get("running", len(self.routes)),
            "in_flight": len(self.routes),
            "served": self.served,
            "completion_tokens": self.completion_tokens,
            "tokens_per_second": round(rate, 3),
            "backend": getattr(self.backend, "base_model_id", ""),
            "prompt_cache_hits": engine_stats.get("prompt_cache_hits", 0),
            "prompt_cache_tokens_saved": engine_stats.get("prompt_cache_tokens_saved", 0),
            "prompt_cache_bytes": engine_stats.get("prompt_cache_bytes", 0),
        }

    async def _receive_until_stopped(self) -> None:
        stop_wait = asyncio.create_task(self.stopping.wait())
        try:
            while not self.stopping.is_set():
                receive = asyncio.create_task(self.layer.receive(REQUEST_CHANNEL))
                done, _ = await asyncio.wait({receive, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if receive not in done:
                    # A cancelled receive loses nothing (channels-redis keeps a backup
                    # queue), and waiting for it would wait out its blocking pop.
                    receive.cancel()
                    break
                if receive.exception() is not None:
                    # The broker hiccuped; messages wait in Redis until we are back.
                    log.error("receive failed: %r; retrying", receive.exception())
                    await asyncio.sleep(0.5)
                    continue
                await self._on_request(receive.result())
        finally:
            stop_wait.cancel()

    async def _on_request(self, message: dict[str, Any]) -> None:
        if message.get("type") == "inference.batch":
            # Submitted one after the other with nothing awaited between: the engine batches them.
            for request in message.get("requests") or []:
                await self._on_request({"type": "inference.request", **request})
            return
        rid, reply = message.get("request_id"), message.get("reply_channel")
        if not rid or not reply:
            log.warning("dropping a request without request_id/reply_channel: %r", list(message))
            return
        if rid in self._cancelled_early:
            return
        if message.get("deadline") and time.time() > message["deadline"]:
            log.info("request from %s waited past its deadline", reply, extra={"request_id": rid})
            await self._send(reply, _error(rid, "timeout", "the request waited past its deadline"))
            return
        self.routes[rid] = reply
        # Through the outbox, so that an answer ready at once goes out with it as one message.
        self._outbox.put_nowait(
            {
                "type": "inference.accepted",
                "request_id": rid,
                "worker_id": self.worker_id,
                "worker_channel": self.worker_channel,
            }
        )
        try:
            self.backend.submit(message, self._emit)
        except Overloaded as exc:
            self.routes.pop(rid, None)
            await self._send(reply, _error(rid, "overloaded", str(exc) or "the inference queue is full"))
        except Exception as exc:  # a bad request must not take the worker down
            log.exception("request %s failed to start", rid)
            self.routes.pop(rid, None)
            await self._send(reply, _error(rid, "internal", f"the worker could not start the request: {exc}"))
        else:
            log.info("accepted request from %s", reply, extra={"request_id": rid})

    async def _send_forever(self) -> None:
        while True:
            events = [await self._outbox.get()]
            while not self._outbox.empty():
                events.append(self._outbox.get_nowait())
            try:
                await self._send_events(events)
            finally:
                for _ in events:
                    self._outbox.task_done()

    async def _send_events(self, events: list[dict[str, Any]]) -> None:
        for event in _coalesce(events):
            rid = event["request_id"]
            reply = self.routes.get(rid)
            if reply is None:
                continue
            if event["type"] == "inference.accepted":
                await self._send(reply, event)
                continue
            held = self._held.pop(rid, "")
            if event["type"] == "inference.delta":
                event["text"] = held + event["text"]
                if not await self._send(reply, event):
                    # The gateway is behind: keep the text and send it with the next delta,
                    # rather than stall every other stream on this one.
                    self._held[rid] = event["text"]
                continue
            self.routes.pop(rid, None)
            self.served += 1
            # Who answered, for the stored exchange (and the gateway's watch, if nothing came before).
            event["worker_id"], event["worker_channel"] = self.worker_id, self.worker_channel
            self.completion_tokens += int(event.get("completion_tokens") or 0)
            if held:
                await self._send(reply, {"type": "inference.delta", "request_id": rid, "text": held}, retries=20)
            await self._send(reply, event, retries=20)
            log.info(
                "finished: %s (%s tokens)",
                event.get("finish_reason") or event.get("code"),
                event.get("completion_tokens", 0),
                extra={"request_id": rid},
            )

    async def _send(self, channel: str, message: dict[str, Any], retries: int = 0) -> bool:
        from channels.exceptions import ChannelFull

        for attempt in range(retries + 1):
            try:
                await self.layer.send(channel, message)
                return True
            except ChannelFull:
                if attempt < retries:
                    await asyncio.sleep(0.05 * (attempt + 1))
        if retries:
            log.warning("reply channel full, dropped %s for %s", message["type"], message.get("request_id"))
        return False

    async def _control_forever(self) -> None:
        while True:
            message = await self.layer.receive(self.worker_channel)
            kind = message.get("type")
            if kind == "inference.cancel":
                rid = message["request_id"]
                if rid in self.routes:
                    self.backend.cancel(rid)
                else:  # cancelled before it reached any worker: drop it when it comes
                    self._cancelled_early.append(rid)
            elif kind == "inference.adapter_activated":
                await self._loop.run_in_executor(None, self.backend.preload, message["adapter"])

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(heartbeat.INTERVAL)
            try:
                await self.heartbeats.beat(self.worker_id, self.stats())
            except Exception:  # Redis hiccup: try again next second
                log.exception("heartbeat failed")


def _error(request_id: str, code: str, message: str) -> dict[str, Any]:
    return {"type": "inference.error", "request_id": request_id, "code": code, "message": message}


_embedded: dict[int, asyncio.Task] = {}


async def _start_embedded() -> InferenceWorker:
    from inference.service import make_backend  # the engine (and torch) only where a worker runs

    backend = await asyncio.get_running_loop().run_in_executor(None, make_backend)
    worker = InferenceWorker(backend)
    worker.task = asyncio.create_task(worker.run())
    await worker.started.wait()
    return worker


async def ensure_embedded_worker() -> InferenceWorker:
    """Start the in-process worker on this event loop (the embedded default), once."""
    loop = asyncio.get_running_loop()
    starting = _embedded.get(id(loop))
    if starting is None or (starting.done() and (starting.exception() or starting.result().task.done())):
        starting = _embedded[id(loop)] = loop.create_task(_start_embedded())
    return await asyncio.shield(starting)
