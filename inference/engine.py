"""Continuous-batching inference engine with one LoRA adapter per request.

Threading model: callers ``submit`` from any thread; one background thread
owns the model, the KV cache and the adapter slots and runs the step loop:

1. apply cancellations;
2. admit waiting requests while batch rows, staging rows and adapter slots
   allow: build the prompt, pin (or load) the adapter slot, take what the
   prompt cache holds of it;
3. prefill the next chunk (``max_prefill_tokens``) of the newcomers' prompts,
   oldest first; one whose prompt is in moves into the decoding rows with its
   first token;
4. one decode step for every running request, each at its own position with
   its own adapter;
5. stream deltas; finished requests leave at once (their cache row is
   refilled by the last running row, so running rows stay packed).

``on_event`` callbacks run on the engine thread and must be quick (hand off
to a queue or an event loop). This module does not import Django.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .actions import Action
from .batched_lora import LoraBank
from .loading import LoadedModel
from .lora import AdapterError, load_adapter
from .prompt import PersonaSpec, Prompt, PromptTooLong, Turn, build_prompt
from .prompt_cache import AdapterKey, PromptCache
from .reply import ReplyShaper
from .runner import DecoderRunner
from .token_guard import ForgedControlToken

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled"]
ErrorCode = Literal["overloaded", "adapter_error", "invalid", "internal"]


class Overloaded(Exception):
    """The wait queue is full; try again later."""


class EngineStopped(Exception):
    """The engine is stopping or stopped and takes no new requests."""


@dataclass(frozen=True)
class AdapterRef:
    id: int
    version: int
    path: str
    sha256: str | None = None


@dataclass
class Request:
    request_id: str
    persona: PersonaSpec
    player: str = ""
    text: str = ""
    memory: Sequence[Turn] = ()
    context: Mapping[str, Any] | None = None
    adapter: AdapterRef | None = None
    max_tokens: int = 64
    seed: int | None = None
    # Benchmarks only: keep generating past <|end|> to force exactly max_tokens.
    ignore_eos: bool = False
    # A prompt built by the caller; when set, persona/memory/context/text are not rendered.
    prompt: Prompt | None = None


@dataclass(frozen=True)
class Delta:
    request_id: str
    text: str


@dataclass(frozen=True)
class Result:
    request_id: str
    text: str  # actions removed: what the player sees
    raw_text: str
    actions: list[Action]
    adapter_id: int | None
    adapter_version: int | None
    prompt_text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    total_ms: float
    finish_reason: FinishReason
    token_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Error:
    request_id: str
    code: ErrorCode
    message: str


Event = Delta | Result | Error
# Generic role names a model may start a turn with, besides the persona's and the player's names.
TURN_SPEAKERS = ("user", "assistant", "player", "npc", "system")
EventCallback = Callable[[Event], None]


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 32
    max_queue: int = 64
    adapter_slots: int = 8
    max_seq_len: int = 512
    max_tokens_limit: int = 256
    # Prompt tokens prefilled per step: newcomers' prompts go in chunks between the decode steps
    # of the replies already streaming, which stall at most one chunk's time for a burst.
    max_prefill_tokens: int = 512
    # Newcomers being prefilled at once, each in a staging row of the KV cache until its prompt is in.
    max_prefilling: int = 16
    max_memory_turns: int = 6
    # Memory for the KV of recent prompts (0: off): a follow-up turn prefills only what is new.
    prompt_cache_mb: int = 256


@dataclass(eq=False)
class _Job:
    request: Request
    on_event: EventCallback
    submitted: float
    generator: torch.Generator | None = None
    prompt: Prompt | None = None
    slot: int = 0
    stream: ReplyShaper | None = None
    length: int = 0  # tokens in the KV cache
    prefilled: int = 0  # prompt tokens in its staging row so far
    staging_row: int = -1
    pending: int = -1  # sampled token not yet in the cache
    first_token_at: float | None = None
    finish: FinishReason | None = None


class _AdapterSlots:
    """LRU of adapters resident in the LoRA bank; a running request pins its slot."""

    def __init__(self, bank: LoraBank, model: Any) -> None:
        self.bank = bank
        self.model = model
        self.by_key: collections.OrderedDict[tuple[int, int], int] = collections.OrderedDict()
        self.pins = [0] * (bank.num_slots + 1)
        self.free = list(range(bank.num_slots, 0, -1))

    def acquire(self, ref: AdapterRef) -> int | None:
        """Pin a slot holding ``ref``; load it if needed. None: every slot is pinned."""
        key = (ref.id, ref.version)
        slot = self.by_key.get(key)
        if slot is None:
            slot = self._take_slot()
            if slot is None:
                return None
            try:
                adapter = load_adapter(ref.path, self.model, expected_sha256=ref.sha256)
                self.bank.write(slot, adapter)
            except Exception:
                self.bank.clear(slot)
                self.free.append(slot)
                raise
            self.by_key[key] = slot
        self.by_key.move_to_end(key)
        self.pins[slot] += 1
        return slot

    def release(self, slot: int) -> None:
        if slot:
            self.pins[slot] -= 1

    def _take_slot(self) -> int | None:
        if self.free:
            return self.free.pop()
        for key, slot in self.by_key.items():  # least recently used first
            if self.pins[slot] == 0:
                del self.by_key[key]
                self.bank.clear(slot)
                return slot
        return None


class Engine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        numbers = ("adapter_slots", "max_batch_size", "max_queue", "max_prefill_tokens", "max_prefilling")
        if any(getattr(self.config, name) < 1 for name in numbers):
            raise ValueError(f"{', '.join(numbers)} must be at least 1")
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self._backend = getattr(self.tokenizer, "backend_tokenizer", None) or getattr(
            self.tokenizer, "_tokenizer", None
        )
        self.stop_ids = frozenset(loaded.info.stop_token_ids)
        # Tokens without a letter or digit (punctuation, brackets, spaces) may repeat: every sentence
        # ends with a full stop, and action markup is made of "[[", ":" and "]]".
        vocab = loaded.model.get_input_embeddings().weight.shape[0]
        self._penalizable = torch.tensor(
            [any(ch.isalnum() for ch in self._decode_text([i])) for i in range(vocab)], dtype=torch.bool
        )
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        n = self.config.max_batch_size
        # Rows 0..n-1 decode; the rows after them stage newcomers' prompts.
        self.runner = DecoderRunner(loaded.model, n + self.config.max_prefilling, self.config.max_seq_len)
        self.max_len = self.runner.max_len
        self.bank = LoraBank(loaded.model, self.config.adapter_slots)
        self.runner.lora_state = self.bank.state
        self.slots = _AdapterSlots(self.bank, loaded.model)
        self._lock = threading.Condition()
        self._waiting: collections.deque[_Job] = collections.deque()
        self._running: list[_Job] = []  # index == KV cache row
        self._prefilling: list[_Job] = []  # oldest first
        self._staging_rows = list(range(n + self.config.max_prefilling - 1, n - 1, -1))
        self._known: set[str] = set()
        self._cancels: set[str] = set()
        self._preloads: list[AdapterRef] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        self._row_slots = torch.zeros(n, dtype=torch.long)
        self._routing_dirty = True
        self.prompt_cache = PromptCache(self.config.prompt_cache_mb * 2**20)

    # ---- public API (any thread) ----

    def start(self) -> Engine:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="voyager-engine", daemon=True)
                self._thread.start()
        return self

    def submit(self, request: Request, on_event: EventCallback) -> None:
        """Queue a request; events arrive on ``on_event`` from the engine thread.

        Raises ``Overloaded`` at once when the wait queue is full and
        ``EngineStopped`` after ``stop``; a duplicate live request id is
        ``ValueError``. Everything else is reported as an ``Error`` event.
        """
        job = _Job(request, on_event, time.perf_counter())
        with self._lock:
            if self._closing:
                raise EngineStopped("the inference engine is shutting down")
            if len(self._waiting) >= self.config.max_queue:
                raise Overloaded(f"{len(self._waiting)} requests already waiting")
            if request.request_id in self._known:
                raise ValueError(f"request id {request.request_id!r} is already in flight")
            self._known.add(request.request_id)
            self._waiting.append(job)
            self._lock.notify()
        self.start()

    def cancel(self, request_id: str) -> bool:
        """Ask for a request to end; it ends with finish_reason "cancelled". False if unknown."""
        with self._lock:
            if request_id not in self._known:
                return False
            self._cancels.add(request_id)
            self._lock.notify()
            return True

    def preload(self, ref: AdapterRef) -> None:
        """Load an adapter version into a free or idle slot ahead of its first request.

        Runs on the engine thread between steps; a failure is only logged
        (the first request that needs the adapter reports it).
        """
        with self._lock:
            self._preloads.append(ref)
            self._lock.notify()
        self.start()

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; with ``drain`` finish every accepted one, else cancel them."""
        with self._lock:
            self._closing = True
            if not drain:
                self._cancels.update(self._known)
            self._lock.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "waiting": len(self._waiting),
                "running": len(self._running),
                "prefilling": len(self._prefilling),
                "queue_limit": self.config.max_queue,
                **self.prompt_cache.stats(),
            }

    # ---- engine thread ----

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (self._busy() or self._cancels or self._preloads or self._closing):
                        self._lock.wait()
                    if self._closing and not self._busy():
                        self._known.clear()
                        return
                    cancels, self._cancels = self._cancels, set()
                    preloads, self._preloads = self._preloads, []
                for ref in preloads:
                    self._preload(ref)
                try:
                    self._step(cancels)
                except Exception as exc:  # keep serving: fail what was in flight, reset the batch
                    log.exception("engine step failed")
                    self._fail_running(f"{type(exc).__name__}: {exc}")

    def _busy(self) -> bool:
        return bool(self._waiting or self._running or self._prefilling)

    def _preload(self, ref: AdapterRef) -> None:
        try:
            slot = self.slots.acquire(ref)
        except Exception:
            log.exception("preloading adapter %s v%s failed", ref.id, ref.version)
            return
        if slot is None:
            log.info("no idle adapter slot to preload %s v%s into", ref.id, ref.version)
        else:
            self.slots.release(slot)  # resident but unpinned: the LRU may evict it

    def _step(self, cancels: set[str]) -> None:
        if cancels:
            self._apply_cancels(cancels)
        self._admit()
        if self._prefilling:
            self._prefill_chunk()
            self._retire()  # those that stopped on their first token
        if self._running:
            # Newcomers decode right away too: their first token is their pending input.
            self._decode()
            self._retire()

    def _apply_cancels(self, cancels: set[str]) -> None:
        dropped: list[_Job] = []
        with self._lock:
            kept: collections.deque[_Job] = collections.deque()
            for job in self._waiting:
                if job.request.request_id in cancels:
                    self._known.discard(job.request.request_id)
                    dropped.append(job)
                else:
                    kept.append(job)
            self._waiting = kept
        for job in dropped:  # callbacks run outside the lock
            self._emit(job, self._result(job, "cancelled"))
        for job in self._running:
            if job.request.request_id in cancels:
                job.finish = "cancelled"
        for job in [j for j in self._prefilling if j.request.request_id in cancels]:
            self._unstage(job)
            job.finish = "cancelled"
            self._complete(job)

    def _admit(self) -> None:
        """Move waiting jobs into free staging rows: prompt, adapter slot, what the prompt cache holds."""
        deferred: list[_Job] = []
        while self._staging_rows and len(self._running) + len(self._prefilling) < self.config.max_batch_size:
            with self._lock:
                if not self._waiting:
                    break
                job = self._waiting.popleft()
            if job.prompt is None and not self._prepare(job):
                continue
            assert job.prompt is not None
            if job.request.adapter is not None and not job.slot:
                try:
                    slot = self.slots.acquire(job.request.adapter)
                except AdapterError as exc:
                    self._finish_error(job, "adapter_error", str(exc))
                    continue
                except Exception as exc:  # e.g. out of memory while loading: still only this request
                    log.exception("loading adapter %s failed", job.request.adapter)
                    self._finish_error(job, "adapter_error", f"could not load adapter: {type(exc).__name__}: {exc}")
                    continue
                if slot is None:  # all slots pinned by running requests: wait for one to finish
                    deferred.append(job)
                    continue
                job.slot = slot
            job.staging_row = self._staging_rows.pop()
            hit = self.prompt_cache.lookup(self._cache_key(job), job.prompt.input_ids)
            if hit is not None:
                self.runner.load_prefix(job.staging_row, hit.keys, hit.values)
            job.prefilled = hit.length if hit else 0
            self._prefilling.append(job)
        if deferred:
            with self._lock:
                self._waiting.extendleft(reversed(deferred))

    def _unstage(self, job: _Job) -> None:
        self._prefilling.remove(job)
        self._staging_rows.append(job.staging_row)
        job.staging_row = -1

    def _prepare(self, job: _Job) -> bool:
        req = job.request
        limit = self.config.max_tokens_limit
        if not isinstance(req.max_tokens, int) or not 1 <= req.max_tokens <= limit:
            self._finish_error(job, "invalid", f"max_tokens must be 1..{limit}, got {req.max_tokens!r}")
            return False
        budget = self.max_len - req.max_tokens
        try:
            if req.prompt is not None:
                prompt = req.prompt
                if len(prompt.input_ids) > budget:
                    raise PromptTooLong(f"prompt has {len(prompt.input_ids)} tokens, the limit is {budget}")
            else:
                prompt = build_prompt(
                    self.tokenizer,
                    req.persona,
                    req.memory,
                    req.context,
                    req.player,
                    req.text,
                    budget,
                    max_memory_turns=self.config.max_memory_turns,
                )
        except PromptTooLong as exc:
            self._finish_error(job, "invalid", str(exc))
            return False
        except ForgedControlToken as exc:  # an attack the cleaning could not undo: refused, the engine goes on
            log.warning("refused request %s: %s", req.request_id, exc)
            self._finish_error(job, "invalid", str(exc))
            return False
        except Exception as exc:  # a bad field the prompt builder choked on: only this request fails
            log.exception("building the prompt for %s failed", req.request_id)
            self._finish_error(job, "invalid", f"could not build the prompt: {type(exc).__name__}: {exc}")
            return False
        if not prompt.input_ids:
            self._finish_error(job, "invalid", "empty prompt")
            return False
        job.prompt = prompt
        seed = req.seed if req.seed is not None else random.getrandbits(63)
        job.generator = torch.Generator().manual_seed(seed)
        # Who may speak in this conversation: a reply must not open with their names, nor start their turn.
        job.stream = ReplyShaper(self._decode_text, speakers=(req.persona.name, req.player, *TURN_SPEAKERS))
        return True

    def _decode_text(self, ids: list[int]) -> str:
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _prefill_chunk(self) -> None:
        """Prefill the next ``max_prefill_tokens`` prompt tokens of the newcomers, oldest first; those
        whose prompt is in join the decoding rows with their first token."""
        budget = self.config.max_prefill_tokens
        chunk: list[tuple[_Job, int]] = []  # (job, prompt tokens it will have in after this chunk)
        for job in self._prefilling:
            if budget <= 0:
                break
            take = min(len(job.prompt.input_ids) - job.prefilled, budget)  # type: ignore[union-attr]
            chunk.append((job, job.prefilled + take))
            budget -= take
        # Same-adapter prompts side by side: the packed prefill runs each adapter once per span.
        chunk.sort(key=lambda item: item[0].slot)
        logits = self.runner.prefill(
            [job.staging_row for job, _ in chunk],
            [job.prompt.input_ids[:end] for job, end in chunk],  # type: ignore[union-attr]
            [job.slot for job, _ in chunk],
            [job.prefilled for job, _ in chunk],
        )
        done = []
        for i, (job, end) in enumerate(chunk):
            job.prefilled = end
            if end == len(job.prompt.input_ids):  # type: ignore[union-attr]
                done.append(i)
        jobs = [chunk[i][0] for i in done]
        for job in jobs:
            prompt = job.prompt.input_ids  # type: ignore[union-attr]
            staged = job.staging_row
            self.prompt_cache.store(self._cache_key(job), prompt, functools.partial(self.runner.read_kv, staged))
            row = len(self._running)
            self.runner.move_row(staged, row, len(prompt))
            self._unstage(job)
            job.length = len(prompt)
            self._row_slots[row] = job.slot
            self._running.append(job)
            self._routing_dirty = True
        if not jobs:
            return
        tokens = self._sample(jobs, logits[done])
        now = time.perf_counter()
        for job, token in zip(jobs, tokens):
            job.first_token_at = now
            self._accept(job, token)

    @staticmethod
    def _cache_key(job: _Job) -> AdapterKey:
        """Whose KV a prompt's is: the adapter version it was computed with (a version never changes)."""
        ref = job.request.adapter
        return (ref.id, ref.version) if ref is not None and job.slot else None

    def _decode(self) -> None:
        n = len(self._running)
        tokens = torch.tensor([job.pending for job in self._running], dtype=torch.long)
        positions = torch.tensor([job.length for job in self._running], dtype=torch.long)
        # Rows keep their slots between joins and leaves: wrappers reuse what they gathered.
        slots = self._row_slots[:n]
        changed, self._routing_dirty = self._routing_dirty, False
        self.bank.state.set(slots if any(j.slot for j in self._running) else None, changed=changed)
        logits = self.runner.decode(n, tokens, positions)
        for job in self._running:
            job.length += 1
        for job, token in zip(self._running, self._sample(self._running, logits)):
            if job.finish is None:
                self._accept(job, token)

    def _sample(self, jobs: Sequence[_Job], logits: torch.Tensor) -> list[int]:
        for i, job in enumerate(jobs):
            penalty = job.request.persona.sampling.repetition_penalty
            if penalty != 1.0 and job.stream is not None and job.stream.tokens:
                _penalize_repeats(logits[i], job.stream.tokens, penalty, self._penalizable)
        picks = logits.argmax(dim=-1)
        for i, job in enumerate(jobs):
            s = job.request.persona.sampling
            if s.temperature > 0 and job.finish is None:
                picks[i] = _sample_one(logits[i], s.temperature, s.top_k, s.top_p, job.generator)
        return picks.tolist()

    def _accept(self, job: _Job, token: int) -> None:
        """Record a sampled token: stop, stream, or carry on."""
        req = job.request
        if token in self.stop_ids and not req.ignore_eos:
            job.finish = "stop"
            return
        assert job.stream is not None
        delta = job.stream.push(token)
        if delta:
            self._emit(job, Delta(req.request_id, delta))
        job.pending = token
        if job.stream.stopped and not req.ignore_eos:
            job.finish = "stop"
        elif len(job.stream.tokens) >= req.max_tokens or job.length + 1 >= self.max_len:
            job.finish = "length"

    def _retire(self) -> None:
        """Finished requests leave; the last row moves into each freed row."""
        row = 0
        while row < len(self._running):
            job = self._running[row]
            if job.finish is None:
                row += 1
                continue
            self._routing_dirty = True
            self._keep_conversation(job, row)
            last = len(self._running) - 1
            if row != last:
                moved = self._running[last]
                self.runner.move_row(last, row, moved.length)
                self._row_slots[row] = self._row_slots[last]
                self._running[row] = moved
            self._running.pop()
            self._complete(job)

    def _keep_conversation(self, job: _Job, row: int) -> None:
        """Keep the prompt and the reply's KV: the NPC's next prompt carries this turn as memory."""
        if job.finish in ("stop", "length") and job.prompt is not None and job.stream is not None:
            tokens = [*job.prompt.input_ids, *job.stream.tokens][: job.length]
            self.prompt_cache.store(self._cache_key(job), tokens, functools.partial(self.runner.read_kv, row))

    def _complete(self, job: _Job) -> None:
        self.slots.release(job.slot)
        with self._lock:
            self._known.discard(job.request.request_id)
        self._emit(job, self._result(job, job.finish or "stop"))

    def _result(self, job: _Job, reason: FinishReason) -> Result:
        tokens = job.stream.tokens if job.stream else []
        text, raw, actions = "", "", []
        if job.stream is not None and tokens:
            text, raw, actions, tail = job.stream.finish(reason)
            if tail:
                self._emit(job, Delta(job.request.request_id, tail))
        now = time.perf_counter()
        first = job.first_token_at or now
        ref = job.request.adapter
        prompt = job.prompt
        return Result(
            request_id=job.request.request_id,
            text=text,
            raw_text=raw,
            actions=actions,
            adapter_id=ref.id if ref and job.slot else None,
            adapter_version=ref.version if ref and job.slot else None,
            prompt_text=prompt.text if prompt else "",
            prompt_tokens=len(prompt.input_ids) if prompt else 0,
            completion_tokens=len(tokens),
            ttft_ms=(first - job.submitted) * 1000.0,
            total_ms=(now - job.submitted) * 1000.0,
            finish_reason=reason,
            token_ids=list(tokens),
        )

    def _finish_error(self, job: _Job, code: ErrorCode, message: str) -> None:
        with self._lock:
            self._known.discard(job.request.request_id)
        self._emit(job, Error(job.request.request_id, code, message))

    def _fail_running(self, message: str) -> None:
        for job in list(self._prefilling):
            self._unstage(job)
            self.slots.release(job.slot)
            self._finish_error(job, "internal", message)
        jobs, self._running = self._running, []
        self._routing_dirty = True
        for job in jobs:
            self.slots.release(job.slot)
            self._finish_error(job, "internal", message)

    def _emit(self, job: _Job, event: Event) -> None:
        try:
            job.on_event(event)
        except Exception:  # a broken consumer must not take the engine down
            log.exception("on_event callback failed for %s", job.request.request_id)


def _penalize_repeats(logits: torch.Tensor, generated: list[int], penalty: float, penalizable: torch.Tensor) -> None:
    """CTRL's repetition penalty, in place, over the reply's own word tokens (not the prompt's: the
    persona's name is there, and the reply should say it): a positive score is divided by
    ``penalty``, a negative one multiplied."""
    seen = torch.tensor(sorted(set(generated)), dtype=torch.long)
    seen = seen[penalizable[seen]]
    scores = logits[seen]
    logits[seen] = torch.where(scores > 0, scores / penalty, scores * penalty)


def _sample_one(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> int:
    scores = logits.float() / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if 0 < top_p < 1:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        drop = cumulative - torch.softmax(sorted_scores, dim=-1) >= top_p
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(0, order, sorted_scores)
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


_ids = itertools.count()


def new_request_id() -> str:
    return f"req-{next(_ids)}"
