"""The engine behind the worker: channel-layer messages in, engine requests and events out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from inference.backends import Backend, EchoBackend
from inference.backends import Overloaded as WorkerOverloaded
from inference.engine import Delta, Engine, EngineConfig, EngineStopped, Error, Overloaded, Result
from inference.loading import LoadedModel, inference_device, load_base_model, weight_dtype
from inference.messages import adapter_ref, error_message, request_from_message, result_fields
from inference.openai_backend import OpenAIBackend

__all__ = ["EngineBackend", "base_model_id", "make_backend", "request_from_message", "result_fields"]

log = logging.getLogger("voyager.worker")


def base_model_id(loaded: LoadedModel) -> str:
    """A stable name for the base model, recorded on every exchange and checked on adapter upload."""
    meta = loaded.info.voyager or {}
    return str(meta.get("model_id") or meta.get("name") or Path(loaded.info.path).name)


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
            emit(error_message(request.get("request_id", ""), "invalid", f"malformed inference request: {exc}"))
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
        return error_message(event.request_id, event.code, event.message)

    def cancel(self, request_id: str) -> None:
        self.engine.cancel(request_id)

    def preload(self, adapter: dict[str, Any]) -> None:
        ref = adapter_ref(adapter)
        if ref is not None:
            self.engine.preload(ref)

    def stop(self, *, drain: bool) -> None:
        self.engine.stop(drain=drain)


def make_backend(kind: str | None = None) -> Backend:
    """The backend the settings name: the model engine, an OpenAI-compatible server, or ``echo``
    for plumbing tests."""
    from django.conf import settings

    kind = kind or settings.VOYAGER_INFERENCE_BACKEND
    if kind == "echo":
        return EchoBackend(delay=settings.VOYAGER_ECHO_DELAY)
    if kind == "openai":
        return OpenAIBackend.from_settings()
    return EngineBackend.from_settings()
