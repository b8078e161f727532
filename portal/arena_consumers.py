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

import logging
import time
from typing import Annotated, Literal

from channels.db import database_sync_to_async
from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from agents_app.arena import MAX_BATTLE_TEXT
from agents_app.protocol import ErrorCode
from agents_app.services import ServiceError
from inference.client import NoWorker, WorkerAsk
from portal import arena
from portal.consumers import BrowserSocket, parse_frame

log = logging.getLogger("voyager.arena")
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
    return parse_frame(text, _frames, ("battle", "ping"))


class ArenaConsumer(BrowserSocket):
    rate, burst = 1.0, 5

    async def connect(self):
        self.battles: dict[str, dict] = {}  # frame id → {plan, results, started}
        await super().connect()

    def parse(self, text: str):
        return parse(text)

    async def on_frame(self, frame) -> None:
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
