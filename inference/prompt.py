"""Prompt construction: one persona, recent memory, game context, the player's words.

Two renderings share one budget policy:

- models with a chat template (any HF chat model) go through
  ``tokenizer.apply_chat_template``;
- the starter model has no template and uses its own special tokens, the same
  format ``inference.corpus`` trains it on (``render_starter``).

When the prompt is over ``max_prompt_tokens`` we drop, in order: the oldest
memory turns, then context (farthest ``nearby`` entries first, then time, then
position), and only as a last resort the *start* of the player's text (the end
of a message is usually the question, so we keep it and mark the cut with
"…").

Everything a player, a modder or the model wrote is untrusted and may not become a
control token: each field is cleaned by the tokenizer's guard (``inference.token_guard``)
and the finished prompt must hold exactly the control tokens of its template alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .token_guard import TokenGuard, guard_for

SYSTEM = "<|system|>"
MEMORY = "<|memory|>"
CONTEXT = "<|context|>"
PLAYER = "<|player|>"
NPC = "<|npc|>"
END = "<|end|>"
PAD = "<|pad|>"
# Order fixes the token ids in the starter tokenizer (pad is 0).
SPECIAL_TOKENS = (PAD, SYSTEM, MEMORY, CONTEXT, PLAYER, NPC, END)

# Turn markers of the chat formats in common use (ChatML, Llama 2 and 3, Mistral, Gemma, Phi, the
# starter model's): removed from untrusted text when no tokenizer says which ones the model has.
CONTROL_SPELLINGS = (
    *SPECIAL_TOKENS,
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|user|>",
    "<|assistant|>",
    "<|im_sep|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<bos>",
    "<eos>",
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
    "<s>",
    "</s>",
)
# Role tokens end a reply as well as <|end|>: a model that starts a new turn is done.
STOP_TOKENS = (END, SYSTEM, MEMORY, CONTEXT, PLAYER, NPC, PAD)

DEFAULT_MAX_MEMORY_TURNS = 6
MAX_NAME_CHARS = 40
# Bounds the tokenizer's work on hostile input; the token budget decides the rest.
MAX_TEXT_CHARS = 4000
MAX_NEARBY = 16
ELLIPSIS = "…"


class PromptTooLong(ValueError):
    """Even the persona header and the shortest possible player text do not fit."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 0.9
    top_k: int = 40
    # Above 1, tokens the reply already used are less likely again (1: off, the plain model).
    repetition_penalty: float = 1.0


@dataclass(frozen=True)
class PersonaSpec:
    slug: str
    name: str
    system_prompt: str
    traits: tuple[str, ...] = ()
    sampling: Sampling = field(default_factory=Sampling)
    # The actions it may take (what the policy lets through); the header tells the model.
    actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Turn:
    player: str
    text: str
    reply: str


@dataclass(frozen=True)
class Prompt:
    text: str
    input_ids: list[int]
    memory_turns: int = 0
    context_trimmed: bool = False
    player_text_truncated: bool = False
    # The chat turns ``text`` was rendered from (chat models only): what an OpenAI-compatible server is sent.
    messages: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class GameContext:
    pos: tuple[int, int, int] | None = None
    time_of_day: float | None = None
    nearby: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return self.pos is None and self.time_of_day is None and not self.nearby


def time_word(time_of_day: float) -> str:
    """Luanti's time of day is 0..1 from midnight; the model reads words."""
    t = time_of_day % 1.0
    if t < 0.22 or t >= 0.8:
        return "night"
    if t < 0.45:
        return "morning"
    if t < 0.55:
        return "noon"
    if t < 0.7:
        return "afternoon"
    return "evening"


def context_line(ctx: GameContext) -> str:
    parts = []
    if ctx.pos is not None:
        parts.append("pos {} {} {}".format(*ctx.pos))
    if ctx.time_of_day is not None:
        parts.append(f"time {time_word(ctx.time_of_day)}")
    if ctx.nearby:
        parts.append("nearby " + ", ".join(ctx.nearby))
    return "; ".join(parts)


def persona_header(persona: PersonaSpec) -> str:
    header = f"You are {persona.name}. {persona.system_prompt}".strip()
    if persona.traits:
        header += " Traits: " + ", ".join(persona.traits) + "."
    if persona.actions:
        header += " Actions: " + ", ".join(persona.actions) + "."
    return header


def render_starter(persona: PersonaSpec, memory: Sequence[Turn], ctx: GameContext, player: str, text: str) -> str:
    """The starter model's format; ``inference.corpus`` renders training data with it."""
    out = [f"{SYSTEM}{persona_header(persona)}{END}\n"]
    if memory:
        lines = "\n".join(f"{t.player}: {t.text}\n{persona.name}: {t.reply}" for t in memory)
        out.append(f"{MEMORY}{lines}{END}\n")
    if not ctx.is_empty():
        out.append(f"{CONTEXT}{context_line(ctx)}{END}\n")
    out.append(f"{PLAYER}{player}: {text}{END}\n{NPC}")
    return "".join(out)


def chat_messages(
    persona: PersonaSpec, memory: Sequence[Turn], ctx: GameContext, player: str, text: str
) -> list[dict[str, str]]:
    """The chat turns of one ask: what a chat template renders here, and what an OpenAI-compatible
    server is sent. The player's name is said once, in the system turn: a ``name: words`` user turn
    teaches a model to open its replies with a speaker prefix."""
    system = persona_header(persona)
    if player:
        system += f"\nYou are talking with {player}."
    if not ctx.is_empty():
        system += f"\nWhat you see: {context_line(ctx)}."
    messages = [{"role": "system", "content": system}]
    for turn in memory:
        said = turn.text if turn.player == player else f"({turn.player}) {turn.text}"
        messages.append({"role": "user", "content": said})
        messages.append({"role": "assistant", "content": turn.reply})
    messages.append({"role": "user", "content": text})
    return messages


def render_chat(
    tokenizer: Any, persona: PersonaSpec, memory: Sequence[Turn], ctx: GameContext, player: str, text: str
) -> str:
    """The chat template's own turns (``chat_messages``)."""
    messages = chat_messages(persona, memory, ctx, player, text)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def normalize_context(context: Mapping[str, Any] | GameContext | None) -> GameContext:
    """The ask's context as numbers and (still untrusted) nearby names, bounded."""
    if context is None:
        return GameContext()
    if isinstance(context, GameContext):
        return replace(context, nearby=tuple(str(n)[:MAX_NAME_CHARS] for n in context.nearby[:MAX_NEARBY]))
    pos = context.get("pos")
    pos_t: tuple[int, int, int] | None = None
    if isinstance(pos, (list, tuple)) and len(pos) == 3:
        pos_t = (round(float(pos[0])), round(float(pos[1])), round(float(pos[2])))
    tod = context.get("time_of_day")
    tod_f = float(tod) if isinstance(tod, (int, float)) and not isinstance(tod, bool) else None
    nearby = context.get("nearby") or ()
    nearby_t = tuple(str(n)[:MAX_NAME_CHARS] for n in list(nearby)[:MAX_NEARBY])
    return GameContext(pos=pos_t, time_of_day=tod_f, nearby=nearby_t)


def context_reductions(ctx: GameContext) -> list[GameContext]:
    """Ever smaller contexts: farthest nearby entries go first, then time, then position."""
    out = []
    for k in range(len(ctx.nearby) - 1, -1, -1):
        out.append(GameContext(ctx.pos, ctx.time_of_day, ctx.nearby[:k]))
    if ctx.time_of_day is not None:
        out.append(GameContext(ctx.pos, None, ()))
    if ctx.pos is not None:
        out.append(GameContext())
    return out


class Cleaner(Protocol):
    def clean(self, text: str) -> str: ...


def clean_ask(
    guard: Cleaner,
    persona: PersonaSpec,
    memory: Sequence[Turn],
    context: Mapping[str, Any] | GameContext | None,
    player: str,
    text: str,
    *,
    max_memory_turns: int = DEFAULT_MAX_MEMORY_TURNS,
) -> tuple[PersonaSpec, list[Turn], GameContext, str, str]:
    """Every untrusted field of an ask through ``guard.clean``, bounded: (persona, memory, context,
    player, text), memory cut to its last ``max_memory_turns`` turns."""

    def clean(value: Any, limit: int | None = None) -> str:
        return guard.clean(str(value)[:limit])

    persona = replace(
        persona,
        name=clean(persona.name),
        system_prompt=clean(persona.system_prompt),
        traits=tuple(t for t in map(clean, persona.traits) if t),
        actions=tuple(a for a in map(clean, persona.actions) if a),
    )
    player = clean(player, MAX_NAME_CHARS)
    text = clean(text, MAX_TEXT_CHARS)
    turns = [
        Turn(clean(t.player, MAX_NAME_CHARS), clean(t.text, MAX_TEXT_CHARS), clean(t.reply, MAX_TEXT_CHARS))
        for t in list(memory)[-max_memory_turns:]
        if max_memory_turns > 0
    ]
    ctx = normalize_context(context)
    ctx = replace(ctx, nearby=tuple(n for n in map(clean, ctx.nearby) if n))
    return persona, turns, ctx, player, text


def build_prompt(
    tokenizer: Any,
    persona: PersonaSpec,
    memory: Sequence[Turn],
    context: Mapping[str, Any] | GameContext | None,
    player: str,
    text: str,
    max_prompt_tokens: int,
    *,
    max_memory_turns: int = DEFAULT_MAX_MEMORY_TURNS,
) -> Prompt:
    """The prompt for one ask. Raises ``PromptTooLong``, or ``token_guard.ForgedControlToken`` if
    untrusted text would still form a control token (after cleaning, only a hostile tokenizer's doing)."""
    guard = guard_for(tokenizer, SPECIAL_TOKENS)
    persona, turns, ctx, player, text = clean_ask(
        guard, persona, memory, context, player, text, max_memory_turns=max_memory_turns
    )
    use_chat = bool(getattr(tokenizer, "chat_template", None))

    def render(who: PersonaSpec, mem: Sequence[Turn], c: GameContext, name: str, words: str) -> str:
        if use_chat:
            return render_chat(tokenizer, who, mem, c, name, words)
        return render_starter(who, mem, c, name, words)

    def encode(mem: Sequence[Turn], c: GameContext, words: str) -> tuple[str, list[int]]:
        rendered = render(persona, mem, c, player, words)
        return rendered, guard.encode(rendered)

    def finish(mem: Sequence[Turn], c: GameContext, words: str, rendered: str, ids: list[int], **flags) -> Prompt:
        # Each field is clean alone; this catches a control token formed where a field meets the template.
        neutral = (_neutral_persona(persona), _neutral_memory(mem, player), _neutral_context(c))
        template = render(*neutral, _neutral(player), _neutral(words))
        guard.verify(ids, guard.encode(template))
        messages = tuple(chat_messages(persona, mem, c, player, words)) if use_chat else ()
        return Prompt(rendered, ids, messages=messages, **flags)

    # 1. Oldest memory goes first.
    for start in range(len(turns) + 1):
        rendered, ids = encode(turns[start:], ctx, text)
        if len(ids) <= max_prompt_tokens:
            return finish(turns[start:], ctx, text, rendered, ids, memory_turns=len(turns) - start)
    # 2. Then context, a piece at a time.
    for smaller in context_reductions(ctx):
        rendered, ids = encode([], smaller, text)
        if len(ids) <= max_prompt_tokens:
            return finish([], smaller, text, rendered, ids, context_trimmed=True)
    # 3. Last resort: keep the end of the player's words.
    words, rendered, ids = _truncate_player_text(guard, encode, text, max_prompt_tokens)
    return finish(
        [], GameContext(), words, rendered, ids, context_trimmed=not ctx.is_empty(), player_text_truncated=True
    )


def _truncate_player_text(guard: TokenGuard, encode: Any, text: str, budget: int) -> tuple[str, str, list[int]]:
    """The longest end of ``text`` that fits, as (words, rendered, ids)."""
    empty = GameContext()
    text_ids = guard.encode(text)

    def attempt(keep: int) -> tuple[str, str, list[int]]:
        tail = guard.tokenizer.decode(text_ids[len(text_ids) - keep :]).lstrip("\ufffd").lstrip()
        # The tail is cut from clean ids; the ellipsis is a new neighbour, so strip again (the
        # whole-prompt check in ``finish`` covers the tokens).
        words = guard.strip(ELLIPSIS + tail)
        return (words, *encode([], empty, words))

    # Token counts are nearly monotonic in ``keep``: binary search, then verify.
    lo, hi = 0, len(text_ids)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(attempt(mid)[2]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    words, rendered, ids = attempt(lo)
    if len(ids) > budget:
        raise PromptTooLong(f"the persona header alone needs more than max_prompt_tokens={budget} tokens")
    return words, rendered, ids


# The template-only render: every untrusted field becomes neutral text of the same shape
# (empty stays empty, a memory turn by the asking player stays theirs), so a chat template
# takes the same branches and puts the same control tokens.
def _neutral(value: str) -> str:
    return "x" if value else ""


def _neutral_persona(persona: PersonaSpec) -> PersonaSpec:
    return replace(
        persona,
        name=_neutral(persona.name),
        system_prompt=_neutral(persona.system_prompt),
        traits=tuple(map(_neutral, persona.traits)),
        actions=tuple(map(_neutral, persona.actions)),
    )


def _neutral_memory(memory: Sequence[Turn], player: str) -> list[Turn]:
    return [
        Turn(_neutral(player) if t.player == player else "y" if t.player else "", _neutral(t.text), _neutral(t.reply))
        for t in memory
    ]


def _neutral_context(ctx: GameContext) -> GameContext:
    return replace(ctx, nearby=tuple("x" for _ in ctx.nearby))
