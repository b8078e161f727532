"""Mod ⇄ gateway protocol, version 1: the frames, validated by one schema.

Every text frame is one JSON object with a ``type``. ``parse_frame`` turns a
frame into a typed model or raises ``FrameError`` with a message that names
the field at fault, which the gateway sends back as an ``error`` frame.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 16 * 1024
MAX_TEXT_CHARS = 1000
MAX_TOKENS_LIMIT = 256

Name = Annotated[str, Field(min_length=1, max_length=64)]


class ErrorCode:
    INVALID = "invalid"
    UNKNOWN_PERSONA = "unknown_persona"
    NPC_FROZEN = "npc_frozen"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    NOT_FOUND = "not_found"
    INTERNAL = "internal"


class CloseCode:
    """WebSocket close codes the gateway uses (documented in docs/protocol.md)."""

    UNAUTHORIZED = 4401  # bad or missing server token
    FRAME_TOO_LARGE = 4413  # one frame over MAX_FRAME_BYTES
    FLOOD = 4429  # far past the per-connection rate limit
    UNSUPPORTED = 4400  # binary frames: the protocol is text only


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class Hello(_Frame):
    type: Literal["hello"]
    protocol: int
    server: str | None = Field(default=None, max_length=100)
    mod_version: str | None = Field(default=None, max_length=40)


class Context(_Frame):
    pos: tuple[float, float, float] | None = None
    time_of_day: float | None = Field(default=None, ge=0, le=1)
    nearby: list[Annotated[str, Field(max_length=80)]] | None = Field(default=None, max_length=32)
    ts: float | None = None


class Ask(_Frame):
    type: Literal["ask"]
    id: str = Field(min_length=1, max_length=64)
    npc: Name
    persona: Name
    player: Name
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    context: Context | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)


class Rate(_Frame):
    type: Literal["rate"]
    exchange: uuid.UUID
    player: Name
    score: Literal[1, -1]
    reason: str | None = Field(default=None, max_length=500)


class Teach(_Frame):
    """An additive extension of version 1: the reply a player wanted instead of the exchange's
    (``/voyager teach``). A gateway without it answers ``invalid`` (an unknown type)."""

    type: Literal["teach"]
    exchange: uuid.UUID
    player: Name
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class Link(_Frame):
    type: Literal["link"]
    player: Name
    code: str = Field(min_length=4, max_length=32)

    @field_validator("code")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()


class Cancel(_Frame):
    type: Literal["cancel"]
    id: str = Field(min_length=1, max_length=64)


class Ping(_Frame):
    type: Literal["ping"]


Frame = Annotated[Hello | Ask | Rate | Teach | Link | Cancel | Ping, Field(discriminator="type")]
_frame_adapter = TypeAdapter(Frame)
FRAME_TYPES = ("hello", "ask", "rate", "teach", "link", "cancel", "ping")


class FrameError(ValueError):
    def __init__(self, message: str, *, frame_id: str | None = None):
        super().__init__(message)
        self.frame_id = frame_id


def _field_path(loc: tuple) -> str:
    # Pydantic puts the union tag first ("ask", "context", "pos"): drop it.
    parts = [str(p) for p in loc]
    if parts and parts[0] in FRAME_TYPES:
        parts = parts[1:]
    return ".".join(parts) or "frame"


def parse_frame(text: str) -> Hello | Ask | Rate | Teach | Link | Cancel | Ping:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise FrameError(f"frame is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise FrameError("frame must be a JSON object")
    frame_id = data.get("id") if isinstance(data.get("id"), str) else None
    kind = data.get("type")
    if kind not in FRAME_TYPES:
        raise FrameError(
            f"type: {kind!r} is not a known frame type (one of {', '.join(FRAME_TYPES)})", frame_id=frame_id
        )
    try:
        return _frame_adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise FrameError(f"{_field_path(first['loc'])}: {first['msg']}", frame_id=frame_id) from None
