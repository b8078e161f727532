"""The game gateway: protocol version 1, and its WebSocket binding (one socket per Luanti server at /ws/luanti/).

``GatewayFrames`` is the protocol behind both bindings: it validates each frame through
``agents_app.protocol`` and calls services in ``agents_app.gateway``; asks go to the inference
workers through ``inference.client`` and their deltas stream straight back to the mod. The
WebSocket consumer is here; the HTTP binding's session is ``agents_app.http_gateway``.
"""

from __future__ import annotations

import logging
import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from agents_app import corrections, gateway, observability
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
    Teach,
    parse_frame,
)
from agents_app.services import ServiceError, game_server_authenticate
from inference.client import NoWorker, WorkerAsk, WorkerAskingMixin

log = logging.getLogger("voyager.gateway")


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


def bearer_token(scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class GatewayFrames:
    """Protocol version 1 behind either binding: a game server's frames in, frames and closes out.

    The WebSocket consumer and the HTTP binding's session (``agents_app.http_gateway``) both
    mix this in with ``WorkerAskingMixin``; each supplies ``send_json`` (the socket, or the
    session's outbox) and ``close(code=...)``, and calls ``gateway_open`` once authenticated,
    ``frame_received`` for every text frame and ``gateway_close`` at the end.
    """

    server = None
    binding = "websocket"

    async def gateway_open(self, server) -> None:
        """Join the server's group, start the worker client; the connection is counted and the server seen."""
        self.server = server
        self.memory = gateway.NpcMemory()  # each NPC's last turns: read once, then kept here
        self.bucket = TokenBucket(settings.VOYAGER_GATEWAY_RATE, settings.VOYAGER_GATEWAY_BURST)
        self.group = gateway.server_group(server.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)

    async def gateway_ready(self) -> None:
        await self.worker_open()
        self.counted = True
        observability.CONNECTIONS.inc()
        await database_sync_to_async(gateway.server_seen)(self.server)
        log.info("game server %s connected (%s)", self.server.name, self.binding)

    async def gateway_close(self) -> None:
        if getattr(self, "counted", False):
            self.counted = False
            observability.CONNECTIONS.dec()
        await self.worker_close()
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)
            self.group = None

    async def gateway_token_changed(self, message):
        """The server's token was changed or revoked in the portal: this connection's token is void."""
        log.info("closing %s: its token was changed or revoked", self.server.name)
        await self.close(code=CloseCode.UNAUTHORIZED)

    async def fail_ask(self, code: str, message: str, frame_id: str, request_id: str | None = None) -> None:
        """Answer an ask with an error: counted, and logged under the ask's request id."""
        observability.ASKS.labels(outcome=code).inc()
        log.info("ask %s answered %s: %s", frame_id, code, message, extra={"request_id": request_id or "-"})
        await self.send_error(code, message, frame_id)

    # --- frames from the mod -------------------------------------------------------------------

    async def frame_received(self, text_data: str) -> bool:
        """Handle one text frame; False when it closed the connection (an oversize frame, a flood)."""
        if len(text_data) > MAX_FRAME_BYTES or len(text_data.encode()) > MAX_FRAME_BYTES:
            log.warning("closing %s: a frame over %d bytes", self.server.name, MAX_FRAME_BYTES)
            await self.close(code=CloseCode.FRAME_TOO_LARGE)
            return False
        budget = self.bucket.take()
        if budget < -self.bucket.burst:
            log.warning("closing %s: frame flood", self.server.name)
            await self.close(code=CloseCode.FLOOD)
            return False
        try:
            frame = parse_frame(text_data)
        except FrameError as exc:
            await self.send_error(ErrorCode.INVALID, str(exc), exc.frame_id)
            return True
        if budget < 0 and not isinstance(frame, Ping):
            await self.send_error(ErrorCode.RATE_LIMITED, "too many frames: slow down", getattr(frame, "id", None))
            return True
        handler = {
            Hello: self.on_hello,
            Ask: self.on_ask,
            Rate: self.on_rate,
            Teach: self.on_teach,
            Link: self.on_link,
            Cancel: self.on_cancel,
            Ping: self.on_ping,
        }[type(frame)]
        try:
            await handler(frame)
        except Exception:
            log.exception("frame %s failed", frame.type)
            await self.send_error(ErrorCode.INTERNAL, "the gateway failed on this frame", getattr(frame, "id", None))
        return True

    async def on_hello(self, frame: Hello):
        if frame.protocol != PROTOCOL_VERSION:
            await self.send_error(ErrorCode.INVALID, f"protocol: version {frame.protocol} is not served (use 1)")
            return
        personas = await database_sync_to_async(gateway.server_personas)(self.server)
        await self.send_json({"type": "welcome", "protocol": PROTOCOL_VERSION, "personas": personas})

    async def on_ping(self, frame: Ping):
        await self.send_json({"type": "pong"})

    async def on_ask(self, frame: Ask):
        if frame.id in self.worker:
            await self.send_error(ErrorCode.INVALID, f"id: {frame.id!r} is already in flight", frame.id)
            return
        if len(self.worker) >= settings.VOYAGER_GATEWAY_MAX_INFLIGHT:
            await self.send_error(ErrorCode.OVERLOADED, "too many asks in flight on this connection", frame.id)
            return
        started = time.monotonic()
        try:
            plan = await database_sync_to_async(gateway.ask_prepare)(
                server=self.server,
                npc_world_id=frame.npc,
                persona_slug=frame.persona,
                with_memory=not self.memory.knows(frame.npc),
            )
        except ServiceError as exc:
            await self.fail_ask(exc.code, str(exc), frame.id)
            return
        request = {
            **plan.request,
            "memory": self.memory.turns(plan, frame.npc),
            "context": frame.context.model_dump(exclude_none=True) if frame.context else {},
            "player": frame.player,
            "text": frame.text,
            "max_tokens": frame.max_tokens,
        }
        try:
            ask = await self.worker.send(
                frame.id, request, timeout=settings.VOYAGER_ASK_TIMEOUT, meta=(frame, plan), started=started
            )
        except NoWorker as exc:
            await self.fail_ask(ErrorCode.UNAVAILABLE, str(exc), frame.id)
            return
        log.info(
            "ask %s from %s for npc %s (%s)",
            frame.id,
            self.server.name,
            frame.npc,
            frame.persona,
            extra={"request_id": ask.request_id},
        )

    async def on_cancel(self, frame: Cancel):
        await self.worker.cancel(frame.id)

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

    async def on_teach(self, frame: Teach):
        try:
            await database_sync_to_async(corrections.correction_from_game)(
                server=self.server, exchange_id=frame.exchange, player=frame.player, text=frame.text
            )
        except ServiceError as exc:
            await self.send_error(exc.code, str(exc))
            return
        await self.send_json({"type": "taught", "exchange": str(frame.exchange)})

    async def on_link(self, frame: Link):
        try:
            await database_sync_to_async(gateway.player_link_verify)(player_name=frame.player, code=frame.code)
        except ServiceError as exc:
            await self.send_error(exc.code, str(exc))
            return
        await self.send_json({"type": "linked", "player": frame.player})

    # --- the worker's answers (routed by ``self.worker``) --------------------------------------

    async def ask_error(self, ask: WorkerAsk, code: str, message: str) -> None:
        await self.fail_ask(code, message, ask.key, ask.request_id)

    async def ask_result(self, ask: WorkerAsk, result: dict) -> None:
        frame, plan = ask.meta
        now = time.monotonic()
        # A reply that came whole (no delta before it) showed its first token with the reply.
        ttft_ms = ((ask.first_delta or now) - ask.started) * 1000
        try:
            with request_context(ask.request_id):
                exchange, verdict = await database_sync_to_async(gateway.exchange_record)(
                    plan=plan,
                    player=frame.player,
                    text=frame.text,
                    context=frame.context.model_dump(exclude_none=True) if frame.context else {},
                    result=result,
                    ttft_ms=ttft_ms,
                    total_ms=(now - ask.started) * 1000,
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
            persona=plan.persona,
            ttft_s=ttft_ms / 1000,
            total_s=now - ask.started,
            completion_tokens=int(result.get("completion_tokens") or 0),
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


class LuantiGatewayConsumer(GatewayFrames, WorkerAskingMixin, AsyncWebsocketConsumer):
    """The WebSocket binding: one socket per game server, authenticated in the handshake."""

    async def connect(self):
        server = await database_sync_to_async(game_server_authenticate)(bearer_token(self.scope))
        if server is None:
            log.info("refused a game-server connection: bad or missing token")
            await self.close(code=CloseCode.UNAUTHORIZED)
            return
        await self.gateway_open(server)
        await self.accept()
        await self.gateway_ready()

    async def disconnect(self, code):
        await self.gateway_close()

    async def receive(self, text_data=None, bytes_data=None):
        if bytes_data is not None:
            await self.close(code=CloseCode.UNSUPPORTED)
            return
        await self.frame_received(text_data)
