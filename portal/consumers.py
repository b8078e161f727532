"""The browser playground at /ws/playground/: talk to any persona through the same worker path as the game.

Session-authenticated (AuthMiddlewareStack) behind AllowedHostsOriginValidator. Frames, one JSON object each:

browser → portal: ``ask`` {id, persona, text, version?}, ``cancel`` {id}, ``ping``
portal → browser: ``delta`` {id, text}, ``reply`` {id, exchange, text, actions, blocked},
``error`` {id?, code, message}, ``pong``.
Anonymous sockets are refused with 4401; oversize frames close with 4413, floods with 4429.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Annotated, Literal

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from agents_app.consumers import TokenBucket
from agents_app.protocol import CloseCode, ErrorCode
from agents_app.services import ServiceError
from inference.heartbeat import heartbeats
from inference.worker import REQUEST_CHANNEL, WORKERS_GROUP, ensure_embedded_worker
from portal import services

log = logging.getLogger("voyager.playground")
MAX_FRAME_BYTES = 4096


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class PlayAsk(_Frame):
    type: Literal["ask"]
    id: str = Field(min_length=1, max_length=64)
    persona: str = Field(min_length=1, max_length=63)
    text: str = Field(min_length=1, max_length=services.MAX_PLAYGROUND_TEXT)
    version: int | None = Field(default=None, ge=1)


class PlayCancel(_Frame):
    type: Literal["cancel"]
    id: str = Field(min_length=1, max_length=64)


class PlayPing(_Frame):
    type: Literal["ping"]


_frames = TypeAdapter(Annotated[PlayAsk | PlayCancel | PlayPing, Field(discriminator="type")])


def parse(text: str):
    try:
        data = json.loads(text)
    except ValueError:
        raise ServiceError("frame: not JSON") from None
    if not isinstance(data, dict) or data.get("type") not in {"ask", "cancel", "ping"}:
        raise ServiceError("type: must be one of ask, cancel, ping")
    try:
        return _frames.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "frame"
        raise ServiceError(f"{where}: {first['msg']}") from None


class PlaygroundConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.user = self.scope.get("user")
        if self.user is None or not self.user.is_authenticated:
            await self.close(code=CloseCode.UNAUTHORIZED)
            return
        self.pending = None  # one ask at a time: a person types one line at a time
        self.bucket = TokenBucket(rate=2.0, burst=10)
        await self.accept()
        if settings.VOYAGER_EMBEDDED_WORKER:
            await ensure_embedded_worker()  # after the handshake: a real model loads for seconds

    async def disconnect(self, code):
        if getattr(self, "pending", None):
            await self._cancel()

    async def send_json(self, payload):
        await self.send(text_data=json.dumps(payload, separators=(",", ":")))

    async def error(self, code, message, frame_id=None):
        payload = {"type": "error", "code": code, "message": message}
        if frame_id is not None:
            payload["id"] = frame_id
        await self.send_json(payload)

    async def receive(self, text_data=None, bytes_data=None):
        if bytes_data is not None:
            await self.close(code=CloseCode.UNSUPPORTED)
            return
        if len(text_data.encode()) > MAX_FRAME_BYTES:
            await self.close(code=CloseCode.FRAME_TOO_LARGE)
            return
        budget = self.bucket.take()
        if budget < -self.bucket.burst:
            await self.close(code=CloseCode.FLOOD)
            return
        try:
            frame = parse(text_data)
        except ServiceError as exc:
            await self.error(ErrorCode.INVALID, str(exc))
            return
        if isinstance(frame, PlayPing):
            await self.send_json({"type": "pong"})
        elif budget < 0:
            await self.error(ErrorCode.RATE_LIMITED, "too many frames: slow down", getattr(frame, "id", None))
        elif isinstance(frame, PlayCancel):
            if self.pending and self.pending["frame"].id == frame.id:
                await self._cancel()
        else:
            await self.on_ask(frame)

    async def on_ask(self, frame: PlayAsk):
        if self.pending is not None:
            await self.error(ErrorCode.OVERLOADED, "one ask at a time: wait for the reply or cancel it", frame.id)
            return
        started = time.monotonic()
        try:
            plan = await database_sync_to_async(services.playground_prepare)(
                user=self.user, persona_slug=frame.persona, version=frame.version
            )
        except ServiceError as exc:
            code = exc.code if exc.code in vars(ErrorCode).values() else ErrorCode.NOT_FOUND
            await self.error(code, str(exc), frame.id)
            return
        if not await heartbeats().alive():
            await self.error(ErrorCode.UNAVAILABLE, "no inference worker is running", frame.id)
            return
        timeout = settings.VOYAGER_ASK_TIMEOUT
        self.pending = {
            "frame": frame, "plan": plan, "request_id": uuid.uuid4().hex, "started": started,
            "first": None, "worker_channel": None,
        }  # fmt: skip
        self.pending["watchdog"] = asyncio.create_task(self._watch(self.pending, started + timeout))
        await self.channel_layer.send(
            REQUEST_CHANNEL,
            {
                "type": "inference.request",
                "request_id": self.pending["request_id"],
                "reply_channel": self.channel_name,
                **plan.request,
                "context": {},
                "player": "you",
                "text": frame.text,
                "max_tokens": None,
                "deadline": time.time() + timeout,
            },
        )

    def _mine(self, message):
        p = self.pending
        return p if p is not None and message.get("request_id") == p["request_id"] else None

    async def inference_accepted(self, message):
        p = self._mine(message)
        if p:
            p["worker_channel"] = message.get("worker_channel")

    async def inference_delta(self, message):
        p = self._mine(message)
        if p and message.get("text"):
            p["first"] = p["first"] or time.monotonic()
            await self.send_json({"type": "delta", "id": p["frame"].id, "text": message["text"]})

    async def inference_result(self, message):
        p = self._mine(message)
        if p is None:
            return
        self._done()
        if message.get("finish_reason") == "cancelled":
            return
        try:
            exchange, verdict = await database_sync_to_async(services.playground_record)(
                user=self.user,
                plan=p["plan"],
                text=p["frame"].text,
                result=message,
                ttft_ms=None if p["first"] is None else (p["first"] - p["started"]) * 1000,
                total_ms=(time.monotonic() - p["started"]) * 1000,
            )
        except Exception:
            log.exception("could not store a playground exchange")
            await self.error(ErrorCode.INTERNAL, "the reply could not be stored", p["frame"].id)
            return
        await self.send_json(
            {
                "type": "reply",
                "id": p["frame"].id,
                "exchange": str(exchange.pk),
                "text": exchange.reply_text,
                "actions": verdict.allowed,
                "blocked": verdict.blocked,
            }
        )

    async def inference_error(self, message):
        p = self._mine(message)
        if p is None:
            return
        self._done()
        code = message.get("code", ErrorCode.INTERNAL)
        await self.error(
            ErrorCode.INTERNAL if code == "adapter_error" else code, message.get("message", ""), p["frame"].id
        )

    def _done(self):
        p, self.pending = self.pending, None
        if p and p.get("watchdog") and p["watchdog"] is not asyncio.current_task():
            p["watchdog"].cancel()
        return p

    async def _cancel(self):
        p = self._done()
        if p is None:
            return
        cancel = {"type": "inference.cancel", "request_id": p["request_id"]}
        if p["worker_channel"]:
            await self.channel_layer.send(p["worker_channel"], cancel)
        else:
            await self.channel_layer.group_send(WORKERS_GROUP, cancel)

    async def _watch(self, p, deadline):
        while self.pending is p:
            await asyncio.sleep(0.25)
            if self.pending is not p:
                return
            if time.monotonic() > deadline:
                await self._cancel()
                await self.error(ErrorCode.TIMEOUT, "no reply within the deadline", p["frame"].id)
                return
