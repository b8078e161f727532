"""The engine behind the worker: channel-layer messages in, engine requests and events out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from inference.backends import Backend, EchoBackend
from inference.backends import Overloaded as WorkerOverloaded
from inference.engine import AdapterRef, Delta, Engine, EngineConfig, EngineStopped, Error, Overloaded, Request, Result
from inference.loading import LoadedModel, inference_device, load_base_model, weight_dtype
from inference.prompt import PersonaSpec, Sampling, Turn

log = logging.getLogger("voyager.worker")


def base_model_id(loaded: LoadedModel) -> str:
    """A stable name for the base model, recorded on every exchange and checked on adapter upload."""
    meta = loaded.info.voyager or {}
    return str(meta.get("model_id") or meta.get("name") or Path(loaded.info.path).name)


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


class EngineBackend:
    """Adapts ``inference.engine.Engine`` to the worker's ``Backend`` protocol."""

    def __init__(self, engine: Engine, model_id: str) -> None:
        self.engine = engine
        self.base_model_id = model_id

    @classmethod
    def from_settings(cls) -> EngineBackend:
        from django.conf import settings

        device = inference_device(settings.VOYAGER_DEVICE)
        loaded = load_base_model(
            settings.VOYAGER_BASE_MODEL, dtype=weight_dtype(settings.VOYAGER_WEIGHTS), device=device
        )
        config = EngineConfig(
            max_queue=settings.VOYAGER_INFERENCE_QUEUE,
            adapter_slots=settings.VOYAGER_ADAPTER_CACHE,
            max_memory_turns=settings.VOYAGER_MEMORY_TURNS,
            prompt_cache_mb=settings.VOYAGER_PROMPT_CACHE_MB,
        )
        log.info(
            "loaded base model %s (%s, %s weights on %s)",
            loaded.info.path,
            loaded.info.architecture,
            loaded.model.dtype,
            device,
        )
        return cls(Engine(loaded, config).start(), base_model_id(loaded))

    def submit(self, request: dict[str, Any], emit) -> None:
        try:
            engine_request = request_from_message(request)
        except (KeyError, TypeError, ValueError) as exc:
            emit(_error(request.get("request_id", ""), "invalid", f"malformed inference request: {exc}"))
            return
        try:
            self.engine.submit(engine_request, lambda event: emit(self._message(event)))
        except (Overloaded, EngineStopped) as exc:
            raise WorkerOverloaded(str(exc)) from exc

    def _message(self, event) -> dict[str, Any]:
        if isinstance(event, Delta):
            return {"type": "inference.delta", "request_id": event.request_id, "text": event.text}
        if isinstance(event, Result):
            return {
                "type": "inference.result",
                "request_id": event.request_id,
                **result_fields(event, self.base_model_id),
            }
        assert isinstance(event, Error)
        return _error(event.request_id, event.code, event.message)

    def cancel(self, request_id: str) -> None:
        self.engine.cancel(request_id)

    def preload(self, adapter: dict[str, Any]) -> None:
        ref = adapter_ref(adapter)
        if ref is not None:
            self.engine.preload(ref)

    def stop(self, *, drain: bool) -> None:
        self.engine.stop(drain=drain)


def _error(request_id: str, code: str, message: str) -> dict[str, Any]:
    return {"type": "inference.error", "request_id": request_id, "code": code, "message": message}


def make_backend(kind: str | None = None) -> Backend:
    """The backend the settings name: the model engine, or ``echo`` for plumbing tests."""
    from django.conf import settings

    kind = kind or settings.VOYAGER_INFERENCE_BACKEND
    if kind == "echo":
        return EchoBackend(delay=settings.VOYAGER_ECHO_DELAY)
    return EngineBackend.from_settings()
