"""The worker's messages and the engine's types: an ``inference.request`` in, the fields of
``inference.result`` and ``inference.error`` out. Every backend speaks through these."""

from __future__ import annotations

from typing import Any

from inference.engine import AdapterRef, Request, Result
from inference.prompt import PersonaSpec, Sampling, Turn


def result_fields(event: Result, model_id: str) -> dict[str, Any]:
    """A finished reply as the gateway's services take it (``gateway.exchange_record``'s ``result``)."""
    return {
        "text": event.text,
        "raw_text": event.raw_text,
        "actions": [dict(a) for a in event.actions],
        "adapter_id": event.adapter_id,
        "prompt": event.prompt_text,
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "ttft_ms": event.ttft_ms,
        "total_ms": event.total_ms,
        "finish_reason": event.finish_reason,
        "base_model_id": model_id,
    }


def adapter_ref(data: dict[str, Any] | None) -> AdapterRef | None:
    if not data:
        return None
    return AdapterRef(
        id=int(data["id"]), version=int(data["version"]), path=str(data["path"]), sha256=data.get("sha256")
    )


def request_from_message(message: dict[str, Any]) -> Request:
    persona = message["persona"]
    spec = PersonaSpec(
        slug=persona["slug"],
        name=persona["name"],
        system_prompt=persona.get("system_prompt", ""),
        traits=tuple(persona.get("traits") or ()),
        actions=tuple(persona.get("allowed_actions") or ()),
        sampling=Sampling(
            temperature=float(persona.get("temperature", 0.7)),
            top_p=float(persona.get("top_p", 0.9)),
            repetition_penalty=float(persona.get("repetition_penalty", 1.0)),
        ),
    )
    memory = tuple(Turn(player=m["player"], text=m["text"], reply=m["reply"]) for m in message.get("memory") or ())
    return Request(
        request_id=message["request_id"],
        persona=spec,
        player=message.get("player", ""),
        text=message.get("text", ""),
        memory=memory,
        context=message.get("context") or None,
        adapter=adapter_ref(message.get("adapter")),
        max_tokens=int(message.get("max_tokens") or persona.get("max_tokens") or 64),
        seed=message.get("seed"),
    )


def error_message(request_id: str, code: str, message: str) -> dict[str, Any]:
    return {"type": "inference.error", "request_id": request_id, "code": code, "message": message}
