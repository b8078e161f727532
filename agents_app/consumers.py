"""The game gateway: one WebSocket per Luanti server at /ws/luanti/, protocol version 1.

The consumer authenticates, validates each frame through ``agents_app.protocol``,
and calls services in ``agents_app.gateway``; asks go to the inference workers
over the channel layer and their deltas stream straight back to the mod.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from agents_app import gateway, hotpath, observability
from agents_app.hotpath import db
from agents_app.observability import request_context
from agents_app.protocol import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Ask,
    Cancel,
    CloseCode,
    ErrorCode,
    FrameError,
    Hello,
    Link,
    Ping,
    Rate,
    parse_frame,
)
from agents_app.services import ServiceError, game_server_authenticate
from inference.heartbeat import heartbeats
from inference.worker import REQUEST_CHANNEL, WORKERS_GROUP, ensure_embedded_worker

log = logging.getLogger("voyager.gateway")

# An accepted ask whose worker stops beating for this long is answered `unavailable`.
WATCH_INTERVAL = 0.25
# NPCs per connection whose last plan is kept for speculative asks.
MAX_PLANS = 4096


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


class TokenBucket:
    """Per-connection frame budget. Overdrawn: `rate_limited`; far overdrawn: a flood."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - 1
        self.stamp = now
        return self.tokens


@dataclass
class PendingAsk:
    frame: Ask
    plan: gateway.AskPlan
    request_id: str
    started: float
    deadline: float
    worker_id: str | None = None
    worker_channel: str | None = None
    first_delta: float | None = None
    done: bool = False
    workers_at_send: frozenset[str] = frozenset()
    # A speculative ask (sent with the NPC's last plan): its database check, running meanwhile.
    verify: asyncio.Task | None = None


def _model_side(plan: gateway.AskPlan) -> dict:
    """What of a plan shapes the worker's answer (the memory is the connection's own)."""
    return {k: v for k, v in plan.request.items() if k != "memory"}


def bearer_token(scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class LuantiGatewayConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.server = await database_sync_to_async(game_server_authenticate)(bearer_token(self.scope))
        if self.server is None:
            log.info("refused a game-server connection: bad or missing token")
            await self.close(code=CloseCode.UNAUTHORIZED)
            return
        self.asks: dict[str, PendingAsk] = {}  # by the mod's ask id
        self.by_request: dict[str, str] = {}  # worker request id → ask id
        self.memory = gateway.NpcMemory()  # each NPC's last turns: read once, then kept here
        self.plans: dict[str, gateway.AskPlan] = {}  # each NPC's last checked plan, for speculative asks
        self.bucket = TokenBucket(settings.VOYAGER_GATEWAY_RATE, settings.VOYAGER_GATEWAY_BURST)
        self.watchdog: asyncio.Task | None = None
        self.group = gateway.server_group(self.server.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        if settings.VOYAGER_EMBEDDED_WORKER:
            # After the handshake: loading a real model takes longer than a server's handshake timeout,
            # and the frames that arrive meanwhile wait for this method to return.
            await ensure_embedded_worker()
        self.counted = True
        observability.CONNECTIONS.inc()
        await database_sync_to_async(gateway.server_seen)(self.server)
        log.info("game server %s connected", self.server.name)

    async def disconnect(self, code):
        if getattr(self, "counted", False):
            self.counted = False
            observability.CONNECTIONS.dec()
        for ask in list(getattr(self, "asks", {}).values()):
            await self._cancel_ask(ask)
        if getattr(self, "watchdog", None) is not None:
            self.watchdog.cancel()
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def dispatch(self, message):
        """As Channels dispatches, without its ``close_old_connections`` before every message.

        That call is a trip to the database thread per frame and per worker message, and with
        ``CONN_HEALTH_CHECKS`` it makes the next query start with a ``SELECT 1``: on an ask,
        three thread trips and two round trips more. Nothing here touches the database outside
        ``hotpath.db`` (connection hygiene at most once a second) or ``database_sync_to_async``
        (hygiene around each call).
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def gateway_token_changed(self, message):
        """The server's token was changed or revoked in the portal: this connection's token is void."""
        log.info("closing %s: its token was changed or revoked", self.server.name)
        await self.close(code=CloseCode.UNAUTHORIZED)

    async def send_json(self, payload: dict) -> None:
        await self.send(text_data=json.dumps(payload, separators=(",", ":")))

    async def send_error(self, code: str, message: str, frame_id: str | None = None) -> None:
        payload = {"type": "error", "code": code, "message": message}
        if frame_id is not None:
            payload["id"] = frame_id
        await self.send_json(payload)

    async def fail_ask(self, code: str, message: str, frame_id: str, request_id: str | None = None) -> None:
        """Answer an ask with an error: counted, and logged under the ask's request id."""
        observability.ASKS.labels(outcome=code).inc()
        log.info("ask %s answered %s: %s", frame_id, code, message, extra={"request_id": request_id or "-"})
        await self.send_error(code, message, frame_id)

    # --- frames from the mod -------------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        if bytes_data is not None:
            await self.close(code=CloseCode.UNSUPPORTED)
            return
        if len(text_data) > MAX_FRAME_BYTES or len(text_data.encode()) > MAX_FRAME_BYTES:
            log.warning("closing %s: a frame over %d bytes", self.server.name, MAX_FRAME_BYTES)
            await self.close(code=CloseCode.FRAME_TOO_LARGE)
            return
        budget = self.bucket.take()
        if budget < -self.bucket.burst:
            log.warning("closing %s: frame flood", self.server.name)
            await self.close(code=CloseCode.FLOOD)
            return
        try:
            frame = parse_frame(text_data)
        except FrameError as exc:
            await self.send_error(ErrorCode.INVALID, str(exc), exc.frame_id)
            return
        if budget < 0 and not isinstance(frame, Ping):
            await self.send_error(ErrorCode.RATE_LIMITED, "too many frames: slow down", getattr(frame, "id", None))
            return
        handler = {
            Hello: self.on_hello,
            Ask: self.on_ask,
            Rate: self.on_rate,
            Link: self.on_link,
            Cancel: self.on_cancel,
            Ping: self.on_ping,
        }[type(frame)]
        try:
            await handler(frame)
        except Exception:
            log.exception("frame %s failed", frame.type)
            await self.send_error(ErrorCode.INTERNAL, "the gateway failed on this frame", getattr(frame, "id", None))

    async def on_hello(self, frame: Hello):
        if frame.protocol != PROTOCOL_VERSION:
            await self.send_error(ErrorCode.INVALID, f"protocol: version {frame.protocol} is not served (use 1)")
            return
        personas = await database_sync_to_async(
            lambda: list(gateway.Persona.objects.order_by("slug").values_list("slug", flat=True))
        )()
        await self.send_json({"type": "welcome", "protocol": PROTOCOL_VERSION, "personas": personas})

    async def on_ping(self, frame: Ping):
        await self.send_json({"type": "pong"})

    async def on_ask(self, frame: Ask):
        if frame.id in self.asks:
            await self.send_error(ErrorCode.INVALID, f"id: {frame.id!r} is already in flight", frame.id)
            return
        if len(self.asks) >= settings.VOYAGER_GATEWAY_MAX_INFLIGHT:
            await self.send_error(ErrorCode.OVERLOADED, "too many asks in flight on this connection", frame.id)
            return
        started = time.monotonic()
        request_id = uuid.uuid4().hex
        known = self.plans.get(frame.npc)
        speculative = (
            known is not None
            and known.persona is not None
            and known.persona.slug == frame.persona
            and not (known.npc is not None and known.npc.is_frozen())
        )
        if speculative:
            # The NPC answered on this connection before: the ask goes to the worker with that
            # plan at once, and the database check runs meanwhile. Nothing of the answer reaches
            # the game before the check has passed (see _verify).
            plan = known
        else:
            try:
                plan = await self._prepare(frame, with_memory=not self.memory.knows(frame.npc))
            except ServiceError as exc:
                await self.fail_ask(exc.code, str(exc), frame.id, request_id)
                return
            self._keep_plan(frame.npc, plan)
        if not await live_workers() and not await live_workers(fresh=True):
            await self.fail_ask(ErrorCode.UNAVAILABLE, "no inference worker is running", frame.id, request_id)
            return
        timeout = settings.VOYAGER_ASK_TIMEOUT
        ask = PendingAsk(
            frame=frame,
            plan=plan,
            request_id=request_id,
            started=started,
            deadline=started + timeout,
            workers_at_send=frozenset(await live_workers()),
        )
        self.asks[frame.id] = ask
        self.by_request[ask.request_id] = frame.id
        await self._dispatch(ask)
        if speculative:  # the check runs while the worker answers
            ask.verify = asyncio.create_task(self._verify(ask))
        # Logged once the ask is on its way (a log line written on a cold CPU costs a fifth of a millisecond).
        log.info(
            "ask %s from %s for npc %s (%s)",
            frame.id,
            self.server.name,
            frame.npc,
            frame.persona,
            extra={"request_id": request_id},
        )
        if self.watchdog is None or self.watchdog.done():
            self.watchdog = asyncio.create_task(self._watch())

    async def _prepare(self, frame: Ask, *, with_memory: bool) -> gateway.AskPlan:
        return await db(
            gateway.ask_prepare,
            server=self.server,
            npc_world_id=frame.npc,
            persona_slug=frame.persona,
            with_memory=with_memory,
        )

    def _keep_plan(self, npc: str, plan: gateway.AskPlan) -> None:
        self.plans.pop(npc, None)
        self.plans[npc] = plan
        if len(self.plans) > MAX_PLANS:  # the longest unused goes first
            del self.plans[next(iter(self.plans))]

    async def _dispatch(self, ask: PendingAsk) -> None:
        """Send the ask to whichever worker takes it first, as the plan says."""
        frame = ask.frame
        timeout = max(0.0, ask.deadline - time.monotonic())
        await self.channel_layer.send(
            REQUEST_CHANNEL,
            {
                "type": "inference.request",
                "request_id": ask.request_id,
                "reply_channel": self.channel_name,
                **ask.plan.request,
                "memory": self.memory.turns(ask.plan, frame.npc),
                "context": frame.context.model_dump(exclude_none=True) if frame.context else {},
                "player": frame.player,
                "text": frame.text,
                "max_tokens": frame.max_tokens,
                "deadline": time.time() + timeout,
            },
        )

    async def _verify(self, ask: PendingAsk) -> None:
        try:
            await self._verify_plan(ask)
        except Exception:  # a task of its own: nobody else would hear of it
            log.exception("checking ask %s failed", ask.frame.id, extra={"request_id": ask.request_id})

    async def _verify_plan(self, ask: PendingAsk) -> None:
        """The database check of a speculative ask, run while the worker answers.

        Passed: the ask goes on with the fresh plan. Refused (the NPC was frozen, its persona
        deleted...): the worker's request is cancelled and the ask answered with the error. The
        persona or its active adapter changed: the answer under way is from the old one, so it
        is cancelled and the ask sent again with the fresh plan.
        """
        frame = ask.frame
        try:
            fresh = await hotpath.plan_known(self.server, frame.npc, frame.persona, ask_id=frame.id)
        except ServiceError as exc:
            self.plans.pop(frame.npc, None)
            if not ask.done:
                await self._cancel_ask(ask)
                await self.fail_ask(exc.code, str(exc), frame.id, ask.request_id)
            return
        except Exception:
            log.exception("checking ask %s failed", frame.id, extra={"request_id": ask.request_id})
            self.plans.pop(frame.npc, None)
            if not ask.done:
                await self._cancel_ask(ask)
                await self.fail_ask(ErrorCode.INTERNAL, "the gateway failed on this frame", frame.id, ask.request_id)
            return
        self._keep_plan(frame.npc, fresh)
        if ask.done:
            return
        sent, ask.plan = ask.plan, fresh
        if _model_side(sent) != _model_side(fresh):
            log.info("ask %s: its persona changed, sent again", frame.id, extra={"request_id": ask.request_id})
            await self._withdraw(ask)
            ask.request_id = uuid.uuid4().hex
            ask.worker_id = ask.worker_channel = None
            ask.first_delta = None
            self.by_request[ask.request_id] = frame.id
            await self._dispatch(ask)

    async def _checked(self, ask: PendingAsk, message) -> bool:
        """Whether a worker's message may go on to the game: the ask's check passed, and the
        message is for the request now under way (not one withdrawn after the check)."""
        if ask.verify is not None:
            if not ask.verify.done():
                await asyncio.shield(ask.verify)
            ask.verify = None
        return not ask.done and message.get("request_id") == ask.request_id

    async def on_cancel(self, frame: Cancel):
        ask = self.asks.get(frame.id)
        if ask is not None:
            await self._cancel_ask(ask)

    async def on_rate(self, frame: Rate):
        try:
            await database_sync_to_async(gateway.rating_from_game)(
                server=self.server,
                exchange_id=frame.exchange,
                player=frame.player,
                score=frame.score,
                reason=frame.reason or "",
            )
        except ServiceError as exc:
            await self.send_error(exc.code, str(exc))
            return
        await self.send_json({"type": "rated", "exchange": str(frame.exchange)})

    async def on_link(self, frame: Link):
        try:
            await database_sync_to_async(gateway.player_link_verify)(player_name=frame.player, code=frame.code)
        except ServiceError as exc:
            await self.send_error(exc.code, str(exc))
            return
        await self.send_json({"type": "linked", "player": frame.player})

    # --- messages from the inference worker ----------------------------------------------------

    def _ask_for(self, message) -> PendingAsk | None:
        ask_id = self.by_request.get(message.get("request_id"))
        ask = self.asks.get(ask_id) if ask_id else None
        return None if ask is None or ask.done else ask

    @staticmethod
    def _note_worker(ask: PendingAsk, message) -> None:
        """Which worker has the ask: said by ``accepted``, or by the first message after it."""
        if ask.worker_channel is None and message.get("worker_channel"):
            ask.worker_id, ask.worker_channel = message.get("worker_id"), message["worker_channel"]

    async def inference_accepted(self, message):
        ask = self._ask_for(message)
        if ask:
            self._note_worker(ask, message)

    async def inference_delta(self, message):
        ask = self._ask_for(message)
        if ask is None or not await self._checked(ask, message):
            return
        self._note_worker(ask, message)
        if message.get("text"):
            if ask.first_delta is None:
                ask.first_delta = time.monotonic()
            await self.send_json({"type": "delta", "id": ask.frame.id, "text": message["text"]})

    async def inference_result(self, message):
        ask = self._ask_for(message)
        if ask is None or not await self._checked(ask, message):
            return
        self._finish(ask)
        self._note_worker(ask, message)
        now = time.monotonic()
        frame = ask.frame
        # A reply that came whole (no delta before it) showed its first token with the reply.
        ttft_ms = ((ask.first_delta or now) - ask.started) * 1000
        try:
            with request_context(ask.request_id):
                exchange, verdict = await hotpath.store(
                    plan=ask.plan,
                    player=frame.player,
                    text=frame.text,
                    context=frame.context.model_dump(exclude_none=True) if frame.context else {},
                    result={**message, "worker_id": message.get("worker_id") or ask.worker_id or ""},
                    ttft_ms=ttft_ms,
                    total_ms=(now - ask.started) * 1000,
                    ask_id=frame.id,
                )
        except Exception:
            log.exception("could not store the exchange for ask %s", frame.id, extra={"request_id": ask.request_id})
            await self.fail_ask(ErrorCode.INTERNAL, "the reply could not be stored", frame.id, ask.request_id)
            return
        self.memory.remember(frame.npc, player=frame.player, text=frame.text, reply=exchange.reply_text)
        reply = {
            "type": "reply",
            "id": frame.id,
            "exchange": str(exchange.pk),
            "text": exchange.reply_text,
            "actions": verdict.allowed,
            "blocked": verdict.blocked,
        }
        if verdict.frozen_until is not None:
            reply["frozen_until"] = verdict.frozen_until.isoformat()
        await self.send_json(reply)
        observability.observe_reply(
            persona=frame.persona,
            ttft_s=ttft_ms / 1000,
            total_s=now - ask.started,
            completion_tokens=int(message.get("completion_tokens") or 0),
        )
        log.info(
            "ask %s replied: exchange %s by worker %s, %d blocked, %d policy hits",
            frame.id,
            exchange.pk,
            ask.worker_id,
            len(verdict.blocked),
            len(verdict.hits),
            extra={"request_id": ask.request_id},
        )

    async def inference_error(self, message):
        ask = self._ask_for(message)
        if ask is None or not await self._checked(ask, message):
            return
        self._finish(ask)
        code = message.get("code", ErrorCode.INTERNAL)
        if code == "adapter_error":  # the mod knows the protocol's codes only
            code = ErrorCode.INTERNAL
        await self.fail_ask(code, message.get("message", "inference failed"), ask.frame.id, ask.request_id)

    # --- bookkeeping ---------------------------------------------------------------------------

    def _finish(self, ask: PendingAsk) -> None:
        ask.done = True
        self.asks.pop(ask.frame.id, None)
        self.by_request.pop(ask.request_id, None)

    async def _cancel_ask(self, ask: PendingAsk) -> None:
        self._finish(ask)
        await self._withdraw(ask)

    async def _withdraw(self, ask: PendingAsk) -> None:
        """Tell the worker to drop the ask's request under way."""
        self.by_request.pop(ask.request_id, None)
        cancel = {"type": "inference.cancel", "request_id": ask.request_id}
        if ask.worker_channel:
            await self.channel_layer.send(ask.worker_channel, cancel)
        else:  # not accepted yet: whichever worker takes it must drop it
            await self.channel_layer.group_send(WORKERS_GROUP, cancel)

    @staticmethod
    def _lost_with_a_worker(ask: PendingAsk, alive: set[str]) -> bool:
        """Not yet accepted, and a worker that was alive when it was sent has died since: the dying
        worker's connection may have taken it off the channel, and nobody will ever answer."""
        waited = time.monotonic() - ask.started
        return ask.worker_id is None and waited > 1.0 and bool(ask.workers_at_send - alive)

    @staticmethod
    def _served_by(ask: PendingAsk, alive: set[str]) -> bool:
        return ask.worker_id in alive if ask.worker_id is not None else bool(alive)

    async def _watch(self) -> None:
        """One loop per connection: `timeout` past a deadline, `unavailable` when a worker dies mid-stream."""
        while self.asks:
            await asyncio.sleep(WATCH_INTERVAL)
            if not self.asks:
                break
            alive = set(await live_workers())
            now = time.monotonic()
            for ask in list(self.asks.values()):
                if ask.done:
                    continue
                if now > ask.deadline:
                    await self._cancel_ask(ask)
                    await self.fail_ask(ErrorCode.TIMEOUT, "no reply within the deadline", ask.frame.id, ask.request_id)
                    continue
                if not self._served_by(ask, alive) or self._lost_with_a_worker(ask, alive):
                    alive = set(await live_workers(fresh=True))
                if (not self._served_by(ask, alive) or self._lost_with_a_worker(ask, alive)) and not ask.done:
                    await self._cancel_ask(ask)
                    await self.fail_ask(
                        ErrorCode.UNAVAILABLE, "the inference worker stopped answering", ask.frame.id, ask.request_id
                    )
