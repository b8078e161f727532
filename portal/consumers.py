"""The browser playground at /ws/playground/: talk to any persona through the same worker path as the game.

Session-authenticated (AuthMiddlewareStack) behind ``portal.origins.BrowserOriginValidator``: a handshake
from a page of another origin (scheme, host and port), or with no Origin, is refused with 4403.
Frames, one JSON object each:

browser → portal: ``ask`` {id, persona, text, version?}, ``cancel`` {id}, ``ping``
portal → browser: ``delta`` {id, text}, ``reply`` {id, exchange, text, actions, blocked},
``error`` {id?, code, message}, ``pong``.
Anonymous sockets are refused with 4401; oversize frames close with 4413, floods with 4429.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Annotated, Literal

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from agents_app.consumers import TokenBucket
from agents_app.protocol import CloseCode, ErrorCode
from agents_app.services import ServiceError
from inference.client import NoWorker, WorkerAsk, WorkerAskingMixin
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


def parse_frame(text: str, frames: TypeAdapter, types: tuple[str, ...]):
    """One browser frame, validated by ``frames`` (a union on ``type``), or ServiceError naming the fault."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ServiceError("frame: not JSON") from None
    if not isinstance(data, dict) or data.get("type") not in types:
        raise ServiceError(f"type: must be one of {', '.join(types)}")
    try:
        return frames.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "frame"
        raise ServiceError(f"{where}: {first['msg']}") from None


def parse(text: str):
    return parse_frame(text, _frames, ("ask", "cancel", "ping"))


class BrowserSocket(WorkerAskingMixin, AsyncWebsocketConsumer):
    """A logged-in person's socket that asks the workers: the login check, frame size and flood limits,
    parsing and ``ping``; a subclass gives ``parse`` and its bucket, and takes each other frame in ``on_frame``."""

    rate, burst = 2.0, 10

    def parse(self, text: str):
        raise NotImplementedError

    async def on_frame(self, frame) -> None:
        raise NotImplementedError

    async def connect(self):
        self.user = self.scope.get("user")
        if self.user is None or not self.user.is_authenticated:
            await self.close(code=CloseCode.UNAUTHORIZED)
            return
        self.bucket = TokenBucket(rate=self.rate, burst=self.burst)
        await self.accept()
        await self.worker_open()

    async def disconnect(self, code):
        await self.worker_close()

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
            frame = self.parse(text_data)
        except ServiceError as exc:
            await self.send_error(ErrorCode.INVALID, str(exc))
            return
        if frame.type == "ping":
            await self.send_json({"type": "pong"})
        elif budget < 0:
            await self.send_error(ErrorCode.RATE_LIMITED, "too many frames: slow down", getattr(frame, "id", None))
        else:
            await self.on_frame(frame)


class PlaygroundConsumer(BrowserSocket):
    def parse(self, text: str):
        return parse(text)

    async def on_frame(self, frame) -> None:
        if isinstance(frame, PlayCancel):
            await self.worker.cancel(frame.id)
        else:
            await self.on_ask(frame)

    async def on_ask(self, frame: PlayAsk):
        if len(self.worker):  # one ask at a time: a person types one line at a time
            await self.send_error(ErrorCode.OVERLOADED, "one ask at a time: wait for the reply or cancel it", frame.id)
            return
        try:
            plan = await database_sync_to_async(services.playground_prepare)(
                user=self.user, persona_slug=frame.persona, version=frame.version
            )
        except ServiceError as exc:
            code = exc.code if exc.code in vars(ErrorCode).values() else ErrorCode.NOT_FOUND
            await self.send_error(code, str(exc), frame.id)
            return
        request = {**plan.request, "context": {}, "player": "you", "text": frame.text, "max_tokens": None}
        try:
            await self.worker.send(frame.id, request, timeout=settings.VOYAGER_ASK_TIMEOUT, meta=(frame, plan))
        except NoWorker as exc:
            await self.send_error(ErrorCode.UNAVAILABLE, str(exc), frame.id)

    # --- the worker's answers (routed by ``self.worker``) --------------------------------------

    async def ask_result(self, ask: WorkerAsk, result: dict) -> None:
        frame, plan = ask.meta
        now = time.monotonic()
        try:
            exchange, verdict = await database_sync_to_async(services.playground_record)(
                user=self.user,
                plan=plan,
                text=frame.text,
                result=result,
                ttft_ms=None if ask.first_delta is None else (ask.first_delta - ask.started) * 1000,
                total_ms=(now - ask.started) * 1000,
            )
        except Exception:
            log.exception("could not store a playground exchange")
            await self.send_error(ErrorCode.INTERNAL, "the reply could not be stored", frame.id)
            return
        await self.send_json(
            {
                "type": "reply",
                "id": frame.id,
                "exchange": str(exchange.pk),
                "text": exchange.reply_text,
                "actions": verdict.allowed,
                "blocked": verdict.blocked,
            }
        )
