"""Arena battles at /ws/arena/: two versions of one persona answer the same words, live, in one batch.

Session-authenticated behind the same origin check as the playground. Frames, one JSON object each:

browser → portal: ``battle`` {id, persona, text, a?, b?} (a, b: version numbers, 0 the base model;
by default the active version against the canary or the newest other version), ``ping``
portal → browser: ``delta`` {id, side: "left" | "right", text}, then ``battle`` {id, battle, left:
{text, actions}, right: {text, actions}}, or ``error`` {id?, code, message}; ``pong``.

Nothing the page receives before the vote names a version or an exchange: only the battle's id and
the sides. Both replies are stored together once both are in; if either side fails, neither is.
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

from agents_app.arena import MAX_BATTLE_TEXT
from agents_app.consumers import TokenBucket
from agents_app.protocol import CloseCode, ErrorCode
from agents_app.services import ServiceError
from inference.client import NoWorker, WorkerAsk, WorkerAskingMixin
from portal import arena

log = logging.getLogger("voyager.arena")
MAX_FRAME_BYTES = 4096
SIDES = ("left", "right")


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class BattleAsk(_Frame):
    type: Literal["battle"]
    id: str = Field(min_length=1, max_length=64)
    persona: str = Field(min_length=1, max_length=63)
    text: str = Field(min_length=1, max_length=MAX_BATTLE_TEXT)
    a: int | None = Field(default=None, ge=0)
    b: int | None = Field(default=None, ge=0)


class BattlePing(_Frame):
    type: Literal["ping"]


_frames = TypeAdapter(Annotated[BattleAsk | BattlePing, Field(discriminator="type")])


def parse(text: str):
    try:
        data = json.loads(text)
    except ValueError:
        raise ServiceError("frame: not JSON") from None
    if not isinstance(data, dict) or data.get("type") not in {"battle", "ping"}:
        raise ServiceError("type: must be one of battle, ping")
    try:
        return _frames.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "frame"
        raise ServiceError(f"{where}: {first['msg']}") from None


class ArenaConsumer(WorkerAskingMixin, AsyncWebsocketConsumer):
    async def connect(self):
        self.user = self.scope.get("user")
        if self.user is None or not self.user.is_authenticated:
            await self.close(code=CloseCode.UNAUTHORIZED)
            return
        self.bucket = TokenBucket(rate=1.0, burst=5)
        self.battles: dict[str, dict] = {}  # frame id → {plan, results, started}
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
            frame = parse(text_data)
        except ServiceError as exc:
            await self.send_error(ErrorCode.INVALID, str(exc))
            return
        if isinstance(frame, BattlePing):
            await self.send_json({"type": "pong"})
        elif budget < 0:
            await self.send_error(ErrorCode.RATE_LIMITED, "too many frames: slow down", frame.id)
        else:
            await self.on_battle(frame)

    async def on_battle(self, frame: BattleAsk):
        if self.battles:  # one battle at a time: a person reads two replies at a time
            await self.send_error(ErrorCode.OVERLOADED, "one battle at a time: vote on this one first", frame.id)
            return
        try:
            plan = await database_sync_to_async(arena.battle_prepare)(
                user=self.user, persona_slug=frame.persona, text=frame.text, a=frame.a, b=frame.b
            )
        except ServiceError as exc:
            code = exc.code if exc.code in vars(ErrorCode).values() else ErrorCode.NOT_FOUND
            await self.send_error(code, str(exc), frame.id)
            return
        items = [
            (
                f"{frame.id}:{side}",
                {**ask.request, "context": {}, "player": plan.player, "text": plan.text, "max_tokens": None},
                (frame.id, side),
            )
            for side, ask in zip(SIDES, (plan.left, plan.right))
        ]
        self.battles[frame.id] = {"plan": plan, "results": {}, "started": time.monotonic()}
        try:
            await self.worker.send_batch(items, timeout=settings.VOYAGER_ASK_TIMEOUT)
        except NoWorker as exc:
            self.battles.pop(frame.id, None)
            await self.send_error(ErrorCode.UNAVAILABLE, str(exc), frame.id)

    # --- the worker's answers (routed by ``self.worker``) --------------------------------------

    async def ask_delta(self, ask: WorkerAsk, text: str) -> None:
        battle_id, side = ask.meta
        await self.send_json({"type": "delta", "id": battle_id, "side": side, "text": text})

    async def ask_error(self, ask: WorkerAsk, code: str, message: str) -> None:
        battle_id, side = ask.meta
        if self.battles.pop(battle_id, None) is None:
            return  # the other side failed first and was answered
        other = f"{battle_id}:{'right' if side == 'left' else 'left'}"
        await self.worker.cancel(other)
        await self.send_error(code, f"{side}: {message}", battle_id)

    async def ask_result(self, ask: WorkerAsk, result: dict) -> None:
        battle_id, side = ask.meta
        state = self.battles.get(battle_id)
        if state is None:
            return
        state["results"][side] = result
        if len(state["results"]) < len(SIDES):
            return
        self.battles.pop(battle_id, None)
        try:
            battle = await database_sync_to_async(arena.battle_record)(
                user=self.user,
                plan=state["plan"],
                left=state["results"]["left"],
                right=state["results"]["right"],
                total_ms=(time.monotonic() - state["started"]) * 1000,
            )
        except Exception:
            log.exception("could not store a battle")
            await self.send_error(ErrorCode.INTERNAL, "the battle could not be stored", battle_id)
            return
        await self.send_json(
            {
                "type": "battle",
                "id": battle_id,
                "battle": str(battle.pk),
                "left": {"text": battle.left.reply_text, "actions": battle.left.actions},
                "right": {"text": battle.right.reply_text, "actions": battle.right.actions},
            }
        )
