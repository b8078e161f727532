"""What the inference worker runs requests on: the ``Backend`` protocol, and the echo backend.

The model engine's backend is ``inference.service.EngineBackend``; an OpenAI-compatible
server's is ``inference.openai_backend.OpenAIBackend``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol


class Overloaded(Exception):
    """The worker's queue is full: try later."""


class Backend(Protocol):
    """What the worker needs from a model engine. ``emit`` may be called from any thread."""

    base_model_id: str

    def submit(self, request: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> None: ...

    def cancel(self, request_id: str) -> None: ...

    def preload(self, adapter: dict[str, Any]) -> None: ...

    def stop(self, *, drain: bool) -> None: ...


class EchoBackend:
    """Answers every request with its own words at once (or word by word with ``delay``).

    For the gateway benchmark, which measures the platform without the model,
    and for tests of the plumbing (a worker killed mid-stream).
    """

    base_model_id = "echo"

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = delay
        self._cancelled: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def submit(self, request, emit):
        if self._stopping:
            raise Overloaded("the worker is shutting down")
        if self.delay <= 0:
            self._answer(request, emit)
            return
        thread = threading.Thread(target=self._answer, args=(request, emit), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _answer(self, request, emit):
        rid, started = request["request_id"], time.perf_counter()
        words = request["text"].split(" ")
        sent = []
        ttft = None
        for i, word in enumerate(words):
            if rid in self._cancelled:
                break
            piece = word if i == 0 else " " + word
            sent.append(piece)
            emit({"type": "inference.delta", "request_id": rid, "text": piece})
            ttft = ttft if ttft is not None else (time.perf_counter() - started) * 1000
            if self.delay:
                time.sleep(self.delay)
        text = "".join(sent)
        emit(
            {
                "type": "inference.result",
                "request_id": rid,
                "text": text,
                "raw_text": text,
                "actions": [],
                "adapter_id": (request.get("adapter") or {}).get("id"),
                "prompt": request["text"],
                "prompt_tokens": len(words),
                "completion_tokens": len(sent),
                "ttft_ms": ttft or 0.0,
                "total_ms": (time.perf_counter() - started) * 1000,
                "finish_reason": "cancelled" if rid in self._cancelled else "stop",
                "base_model_id": "echo",
            }
        )

    def cancel(self, request_id):
        self._cancelled.add(request_id)

    def preload(self, adapter):
        pass

    def stop(self, *, drain):
        self._stopping = True
        for thread in self._threads:
            thread.join()
