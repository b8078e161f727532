"""Replies from a serving engine that speaks the OpenAI API (vLLM, SGLang, llama.cpp's llama-server,
Ollama, ``transformers serve``), behind the worker's ``Backend`` protocol.

Each ask becomes one streamed ``POST {base_url}/chat/completions`` whose messages are the engine's
own chat turns (``inference.prompt.chat_messages``); the text that streams back goes through the
engine's ``ReplyShaper``, so players see the same sentences, actions and cuts. The persona's adapter
is the request's ``model``, named by a template the way vLLM names LoRA modules
(``{persona}-v{version}``); ``preload`` asks vLLM to load a newly activated version at run time.

Untrusted text: with the served model's tokenizer at hand (``VOYAGER_BASE_MODEL``, when it has a chat
template) the messages are exactly the engine's: cleaned by the tokenizer's guard, trimmed to the
engine's budget and verified. Without one, control-token spellings of the common chat formats
(``CONTROL_SPELLINGS``) are removed as text; a control token outside that list, or one a normalizer
folds from look-alikes, is not caught, and the server's own context limit is the budget.

One background thread runs an event loop for every stream; ``emit`` is called from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from inference.backends import Overloaded
from inference.engine import TURN_SPEAKERS, AdapterRef, EngineConfig, FinishReason, Request, Result
from inference.messages import adapter_ref, error_message, request_from_message, result_fields
from inference.prompt import CONTROL_SPELLINGS, SPECIAL_TOKENS, PromptTooLong, build_prompt, chat_messages, clean_ask
from inference.reply import ReplyShaper
from inference.token_guard import ForgedControlToken, SpellingGuard, guard_for

log = logging.getLogger("voyager.worker")

# The engine's limits, so one ask gets the same messages and bounds from either backend.
_ENGINE = EngineConfig()
# Error bodies are read this far: enough for the server's message.
MAX_ERROR_BODY = 4000


@dataclass(frozen=True)
class OpenAIConfig:
    base_url: str  # the OpenAI API root, ending in /v1
    model: str  # the base model, as the server names it
    api_key: str | None = None
    adapter_name: str = "{persona}-v{version}"  # "" : every ask goes to the base model
    timeout: float = 30.0  # seconds the server may stay silent
    concurrency: int = 16
    max_queue: int = 256
    runtime_lora: bool = False
    media_root: str | None = None  # where the platform keeps adapters ...
    adapter_root: str | None = None  # ... and where the serving host sees that same folder
    max_memory_turns: int = 6


class _Failure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def adapter_model_name(template: str, persona: str, ref: AdapterRef) -> str:
    """The ``model`` an adapted ask is sent to (vLLM: the LoRA module's name)."""
    return template.format(persona=persona, version=ref.version, adapter_id=ref.id)


def error_for_status(status: int, body: str) -> tuple[str, str]:
    """The protocol's error code for an HTTP error from the server, and a message naming it."""
    detail = _error_text(body)
    message = f"the inference server answered {status}: {detail}"
    lowered = detail.lower()
    # vLLM: "The model `x` does not exist."; Ollama: "model 'x' not found"; transformers serve: "pinned to".
    unknown_model = "is pinned to" in lowered or (
        "model" in lowered and any(words in lowered for words in ("not found", "does not exist", "unknown"))
    )
    if status in (429, 503):
        return "overloaded", message
    if status == 404 or (status in (400, 422) and unknown_model):
        return "adapter_error", message
    if status in (400, 422):
        return "invalid", message
    if status == 502:  # a proxy in front of a server that is down
        return "unavailable", message
    if status == 504:
        return "timeout", message
    return "internal", message


def _error_text(body: str) -> str:
    """The message in an OpenAI-style error body (``{"error": {"message": ...}}`` and its variants)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:500] or "(no message)"
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or error
    if isinstance(data, dict) and "detail" in data and error is data:
        error = data["detail"]
    return str(error)[:500]


@dataclass(eq=False)
class _Job:
    request: Request
    emit: Any
    submitted: float
    task: asyncio.Task | None = None
    cancelled: bool = False
    pieces: list[str] = field(default_factory=list)  # the text as it streamed in
    shaper: ReplyShaper | None = None


class OpenAIBackend:
    """Streams each ask from an OpenAI-compatible server; at most ``concurrency`` at once."""

    def __init__(self, config: OpenAIConfig, tokenizer: Any | None = None) -> None:
        self.config = config
        self.base_model_id = config.model
        self.tokenizer = tokenizer
        self._guard = (
            guard_for(tokenizer, SPECIAL_TOKENS) if tokenizer is not None else SpellingGuard(CONTROL_SPELLINGS)
        )
        self._chat_template = bool(getattr(tokenizer, "chat_template", None))
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="voyager-openai", daemon=True)
        self._thread.start()
        self._client = self._call(self._make_client())
        self._slots = asyncio.Semaphore(config.concurrency)

    @classmethod
    def from_settings(cls) -> OpenAIBackend:
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured

        options = settings.VOYAGER_OPENAI
        if options is None:  # the settings check VOYAGER_OPENAI_* only for this backend
            raise ImproperlyConfigured("the openai backend needs VOYAGER_INFERENCE_BACKEND=openai and its settings")
        config = OpenAIConfig(
            **options,
            max_queue=settings.VOYAGER_INFERENCE_QUEUE,
            media_root=str(settings.MEDIA_ROOT),
            max_memory_turns=settings.VOYAGER_MEMORY_TURNS,
        )
        tokenizer = _local_tokenizer(Path(settings.VOYAGER_BASE_MODEL))
        log.info(
            "inference from %s, model %s (%s)",
            config.base_url,
            config.model,
            "the base model's tokenizer guards prompts" if tokenizer is not None else "control tokens removed as text",
        )
        return cls(config, tokenizer)

    # ---- the Backend protocol (any thread) ----

    def submit(self, request: dict[str, Any], emit) -> None:
        rid = request.get("request_id", "")
        try:
            parsed = request_from_message(request)
        except (KeyError, TypeError, ValueError) as exc:
            emit(error_message(rid, "invalid", f"malformed inference request: {exc}"))
            return
        with self._lock:
            if self._stopping:
                raise Overloaded("the worker is shutting down")
            if len(self._jobs) >= self.config.concurrency + self.config.max_queue:
                raise Overloaded(f"{len(self._jobs)} requests already in flight or waiting")
            if rid in self._jobs:
                raise ValueError(f"request id {rid!r} is already in flight")
            job = self._jobs[rid] = _Job(parsed, emit, time.perf_counter())
        self._loop.call_soon_threadsafe(self._start, job)

    def stats(self) -> dict[str, int]:
        """For the worker's heartbeat: asks streaming from the server, and asks waiting for a slot."""
        with self._lock:
            jobs = len(self._jobs)
        return {"running": min(jobs, self.config.concurrency), "waiting": max(0, jobs - self.config.concurrency)}

    def cancel(self, request_id: str) -> None:
        with self._lock:
            job = self._jobs.get(request_id)
        if job is not None:
            self._loop.call_soon_threadsafe(self._cancel, job)

    def preload(self, adapter: dict[str, Any]) -> None:
        """Ask the server to load a newly activated version (vLLM's runtime LoRA loading); a refusal
        is logged and nothing more: the first ask for it reports an unknown adapter if it stays unknown."""
        ref = adapter_ref(adapter)
        if ref is None or not self.config.runtime_lora or not self.config.adapter_name:
            return
        # The platform keeps a version under MEDIA_ROOT/adapters/<persona>/<name>.
        persona = str(adapter.get("persona") or Path(ref.path).parent.name)
        name = adapter_model_name(self.config.adapter_name, persona, ref)
        try:
            self._call(self._load_lora(name, self.lora_path(ref.path)), timeout=self.config.timeout + 5)
        except Exception as exc:
            log.warning("the inference server did not load adapter %s: %s", name, exc)

    def stop(self, *, drain: bool) -> None:
        if not self._thread.is_alive():
            return
        with self._lock:
            self._stopping = True
            jobs = list(self._jobs.values())
        if not drain:
            for job in jobs:
                self.cancel(job.request.request_id)
        self._call(self._wait_for_jobs())
        self._call(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def lora_path(self, path: str) -> str:
        """An adapter's directory as the serving host sees it."""
        root, remote = self.config.media_root, self.config.adapter_root
        if not root or not remote:
            return path
        try:
            return str(Path(remote) / Path(path).relative_to(root))
        except ValueError:  # not under MEDIA_ROOT: sent as it is
            return path

    # ---- the event loop thread ----

    def _call(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _make_client(self) -> httpx2.AsyncClient:
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        limits = httpx2.Limits(
            max_connections=self.config.concurrency, max_keepalive_connections=self.config.concurrency
        )
        return httpx2.AsyncClient(
            base_url=self.config.base_url + "/", headers=headers, timeout=self.config.timeout, limits=limits
        )

    def _start(self, job: _Job) -> None:
        job.task = self._loop.create_task(self._run(job))
        job.task.add_done_callback(lambda _task, job=job: self._settle(job))

    def _settle(self, job: _Job) -> None:
        """A task cancelled before its first step never ran ``_run``: answer it here."""
        with self._lock:
            unanswered = self._jobs.pop(job.request.request_id, None)
        if unanswered is not None:
            self._emit(job, self._cancelled_result(job))

    def _cancel(self, job: _Job) -> None:
        job.cancelled = True
        if job.task is not None:
            job.task.cancel()  # leaving the stream closes the connection: the server stops generating

    async def _wait_for_jobs(self) -> None:
        while self._jobs:
            tasks = [job.task for job in list(self._jobs.values()) if job.task is not None]
            if tasks:
                await asyncio.wait(tasks)
            else:  # submitted, its task not made yet
                await asyncio.sleep(0.01)

    async def _run(self, job: _Job) -> None:
        rid = job.request.request_id
        try:
            if job.cancelled:  # before it started
                raise asyncio.CancelledError
            body, prompt_text, prompt_tokens = self._body(job.request)
            # The shaper takes token ids; here a "token" is the index of a streamed piece of text.
            job.shaper = ReplyShaper(
                lambda ids: "".join(job.pieces[i] for i in ids),
                speakers=(job.request.persona.name, job.request.player, *TURN_SPEAKERS),
            )
            async with self._slots:
                result = await self._stream(job, body, job.shaper, prompt_text, prompt_tokens)
            self._emit(
                job, {"type": "inference.result", "request_id": rid, **result_fields(result, self.base_model_id)}
            )
        except asyncio.CancelledError:
            if not job.cancelled:
                raise
            self._emit(job, self._cancelled_result(job))
        except _Failure as failure:
            self._emit(job, error_message(rid, failure.code, failure.message))
        except Exception as exc:  # one broken ask must not stop the others
            log.exception("request %s failed", rid)
            self._emit(job, error_message(rid, "internal", f"{type(exc).__name__}: {exc}"))
        finally:
            with self._lock:
                self._jobs.pop(rid, None)

    def _body(self, request: Request) -> tuple[dict[str, Any], str, int]:
        """The chat completion request, the prompt as recorded on the exchange, and its token count if known."""
        limit = _ENGINE.max_tokens_limit
        if not isinstance(request.max_tokens, int) or not 1 <= request.max_tokens <= limit:
            raise _Failure("invalid", f"max_tokens must be 1..{limit}, got {request.max_tokens!r}")
        try:
            if self._chat_template:
                prompt = build_prompt(
                    self.tokenizer,
                    request.persona,
                    request.memory,
                    request.context,
                    request.player,
                    request.text,
                    _ENGINE.max_seq_len - request.max_tokens,
                    max_memory_turns=self.config.max_memory_turns,
                )
                messages, prompt_text, prompt_tokens = list(prompt.messages), prompt.text, len(prompt.input_ids)
            else:
                ask = clean_ask(
                    self._guard,
                    request.persona,
                    request.memory,
                    request.context,
                    request.player,
                    request.text,
                    max_memory_turns=self.config.max_memory_turns,
                )
                messages = chat_messages(*ask)
                prompt_text, prompt_tokens = json.dumps(messages, ensure_ascii=False), 0
        except (PromptTooLong, ForgedControlToken) as exc:
            raise _Failure("invalid", str(exc)) from exc
        sampling = request.persona.sampling
        body: dict[str, Any] = {
            "model": self._model_for(request),
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": request.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if request.seed is not None:
            body["seed"] = int(request.seed)
        return body, prompt_text, prompt_tokens

    def _model_for(self, request: Request) -> str:
        ref = request.adapter
        if ref is None or not self.config.adapter_name:
            return self.config.model
        return adapter_model_name(self.config.adapter_name, request.persona.slug, ref)

    def _adapter(self, request: Request) -> AdapterRef | None:
        return request.adapter if self.config.adapter_name else None

    async def _stream(
        self, job: _Job, body: dict[str, Any], shaper: ReplyShaper, prompt_text: str, prompt_tokens: int
    ) -> Result:
        rid = job.request.request_id
        pieces = job.pieces
        finish: str | None = None
        usage: dict[str, Any] = {}
        first_at: float | None = None
        try:
            async with self._client.stream("POST", "chat/completions", json=body) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode("utf-8", errors="replace")[:MAX_ERROR_BODY]
                    raise _Failure(*error_for_status(response.status_code, text))
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        finish = finish or "stop"
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise _Failure("internal", f"the inference server failed mid-reply: {_error_text(data)}")
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or ():
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            first_at = first_at or time.perf_counter()
                            pieces.append(piece)
                            delta = shaper.push(len(pieces) - 1)
                            if delta:
                                self._emit(job, {"type": "inference.delta", "request_id": rid, "text": delta})
                        finish = choice.get("finish_reason") or finish
                    if shaper.stopped:  # a loop or another speaker's turn: leaving ends the generation
                        finish = "stop"
                        break
        except httpx2.TimeoutException as exc:
            raise _Failure("timeout", f"the inference server was silent for {self.config.timeout:g} s") from exc
        except httpx2.ConnectError as exc:
            raise _Failure(
                "unavailable", f"the inference server at {self.config.base_url} is unreachable: {exc}"
            ) from exc
        except (httpx2.TransportError, httpx2.StreamError) as exc:
            raise _Failure(
                "unavailable", f"the inference server dropped the reply: {type(exc).__name__}: {exc}"
            ) from exc
        except ValueError as exc:
            raise _Failure("internal", f"the inference server sent a chunk that is not JSON: {exc}") from exc
        if finish is None:
            raise _Failure("unavailable", "the inference server closed the stream before the reply ended")
        reason: FinishReason = "length" if finish == "length" else "stop"
        return self._result(job, shaper, reason, first_at, usage, prompt_text, prompt_tokens)

    def _result(
        self,
        job: _Job,
        shaper: ReplyShaper | None,
        reason: FinishReason,
        first_at: float | None,
        usage: dict[str, Any],
        prompt_text: str,
        prompt_tokens: int,
    ) -> Result:
        rid = job.request.request_id
        text, raw, actions = "", "", []
        pieces = shaper.tokens if shaper is not None else []
        if shaper is not None and pieces:
            text, raw, actions, tail = shaper.finish(reason)
            if tail:
                self._emit(job, {"type": "inference.delta", "request_id": rid, "text": tail})
        now = time.perf_counter()
        ref = self._adapter(job.request)
        return Result(
            request_id=rid,
            text=text,
            raw_text=raw,
            actions=actions,
            adapter_id=ref.id if ref else None,
            adapter_version=ref.version if ref else None,
            prompt_text=prompt_text,
            prompt_tokens=int(usage.get("prompt_tokens") or prompt_tokens),
            # Without usage, the pieces streamed: about one token each on the servers named above.
            completion_tokens=int(usage.get("completion_tokens") or len(pieces)),
            ttft_ms=((first_at or now) - job.submitted) * 1000.0,
            total_ms=(now - job.submitted) * 1000.0,
            finish_reason=reason,
        )

    def _cancelled_result(self, job: _Job) -> dict[str, Any]:
        result = self._result(job, job.shaper, "cancelled", None, {}, "", 0)
        return {
            "type": "inference.result",
            "request_id": job.request.request_id,
            **result_fields(result, self.base_model_id),
        }

    async def _load_lora(self, name: str, path: str) -> None:
        response = await self._client.post("load_lora_adapter", json={"lora_name": name, "lora_path": path})
        if response.status_code == 200:
            log.info("the inference server loaded adapter %s from %s", name, path)
            return
        detail = _error_text(response.text)
        if "already" in detail.lower():
            log.info("the inference server already has adapter %s", name)
            return
        raise RuntimeError(f"it answered {response.status_code}: {detail}")

    def _emit(self, job: _Job, event: dict[str, Any]) -> None:
        try:
            job.emit(event)
        except Exception:  # a broken consumer must not stop the other streams
            log.exception("emit failed for %s", job.request.request_id)


def _local_tokenizer(path: Path) -> Any | None:
    """The base model's tokenizer when its directory is on this host (offline only), else None."""
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # a broken directory: fall back to the text-level guard, and say so
        log.warning("could not load the tokenizer in %s (%s): control tokens are removed as text", path, exc)
        return None
