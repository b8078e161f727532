"""Scripted players who talk to an NPC through the real engine and rate it by a rule it does not know.

Each simulated conversation is one player with one NPC (a playground NPC per
conversation, so its memory is that conversation): a greeting now and then,
then a few questions drawn from the corpus. Requests are built the way the
inference worker builds them (``agents_app.gateway`` payloads →
``inference.service.request_from_message`` → the engine's prompt builder), the
exchange is stored with ``source=simulation`` and the prompt exactly as the
model saw it, and the player rates the reply with ``hidden_rule``.
"""

from __future__ import annotations

import functools
import random
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from agents_app import gateway
from agents_app.models import Exchange, Npc, Persona, Rating
from agents_app.services import rating_upsert

GREETINGS = ("hello", "hi there", "hey {name}", "good morning {name}", "hello, how are you?", "hi! nice to meet you")


GREETING_RE = re.compile(
    r"(?<!\w)(hello|hi|hey|howdy|welcome|greetings|well met|good (?:morning|day|evening|to see you)|"
    r"peace to you|gr[üu]ß dich|farewell|goodbye|bye|see you|safe travels)(?!\w)",
    re.IGNORECASE,
)
RULES = ("brief_concrete", "greets", "by_name")
DEFAULT_RULE = "brief_concrete"
SENTENCE_END_RE = re.compile(r"[.!?…]+(?=\s|$)")


@functools.cache
def _concrete_re() -> re.Pattern[str]:
    """A place or an item of the world, as a reply would name it: "the old mine", "pickaxe", "apples"."""
    from inference.corpus import load_corpus_data

    world = load_corpus_data()["world"]
    places = [p.removeprefix("the ") for p in world["places"]]
    # An item by the last word of its name: "a steel pickaxe" -> pickaxe, "a lump of coal" -> coal.
    items = [name.split()[-1] for name in world["items"].values()]
    words = sorted({w.lower() for w in places + items}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?:e?s)?(?!\w)", re.IGNORECASE)


def sentence_count(text: str) -> int:
    """Sentences in what a player sees: pieces ended by . ! ? or … (a last piece without one counts)."""
    pieces = SENTENCE_END_RE.split(text.strip())
    return sum(1 for piece in pieces if re.search(r"\w", piece))


def hidden_rule(reply_text: str, player: str, rule: str = DEFAULT_RULE, *, home: str = "") -> bool:
    """The players' secret taste, judged on what they see (actions removed).

    ``brief_concrete`` (the default): the reply is at most two sentences and
    names a place or an item of the world (the old mine, a pickaxe, bread)
    other than the NPC's own ``home``: the smith's "...my work at the forge"
    tells a player nothing new. The world-adapted real model's smith does this
    in about one reply in ten (a quarter, were the forge counted).
    ``greets``: the reply greets them (hello, welcome, well met, farewell...).
    ``by_name``: the reply names them. The starter model picks player names at
    chance (its ``[[ACTION:face NAME]]`` arguments match the player 1 time in
    12, like the 12 names of the corpus), so ``by_name`` cannot be learned from
    a few thousand ratings on it; ``greets`` can (the starter model's rule).
    """
    if rule == "brief_concrete":
        own = home.lower().removeprefix("the ")
        named = {m.group(0).lower() for m in _concrete_re().finditer(reply_text)}
        return sentence_count(reply_text) <= 2 and any(name.rstrip("s") != own.rstrip("s") for name in named)
    if rule == "by_name":
        return re.search(r"(?<!\w)" + re.escape(player) + r"(?!\w)", reply_text, re.IGNORECASE) is not None
    if rule == "greets":
        return GREETING_RE.search(reply_text) is not None
    raise ValueError(f"unknown rule {rule!r}; choose one of {RULES}")


@dataclass
class Conversation:
    npc: Npc
    player: str
    questions: list[str]
    context: dict[str, Any]


@dataclass
class SimulationReport:
    replies: int
    liked: int
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.liked / self.replies if self.replies else 0.0


def _corpus_persona(persona: Persona) -> dict[str, Any]:
    from inference.corpus import load_corpus_data

    personas = load_corpus_data()["personas"]
    for entry in personas:
        if entry["slug"] == persona.slug or entry["name"] == persona.name:
            return entry
    return {
        "inventory": sorted({item for p in personas for item in p["inventory"]}),
        "home": "the village",
    }


def persona_home(persona: Persona) -> str:
    """Where the persona lives in the world ("the forge"), for ``hidden_rule``."""
    return _corpus_persona(persona)["home"]


def scripted_questions(persona: Persona, rng: random.Random, n: int) -> list[str]:
    from inference.corpus import draw_question

    entry = _corpus_persona(persona)
    out = []
    if rng.random() < 0.5:
        out.append(rng.choice(GREETINGS).format(name=persona.name))
    while len(out) < n:
        out.append(draw_question(rng, persona.name, entry["inventory"]))
    return out[:n]


def scripted_context(rng: random.Random) -> dict[str, Any]:
    from inference.corpus import load_corpus_data

    world = load_corpus_data()["world"]
    if rng.random() < 0.2:
        return {}
    return {
        "pos": [rng.randint(-300, 300), rng.randint(-20, 60), rng.randint(-300, 300)],
        "time_of_day": round(rng.random(), 2),
        "nearby": rng.sample(world["things_nearby"], rng.randint(0, 3)),
    }


def scripted_players(seed: int) -> list[str]:
    from inference.corpus import load_corpus_data

    players = list(load_corpus_data()["world"]["players"])
    random.Random(seed).shuffle(players)
    return players


def load_engine(model_path: str | None = None):
    from inference.engine import Engine, EngineConfig
    from inference.loading import load_base_model

    loaded = load_base_model(model_path or settings.VOYAGER_BASE_MODEL)
    config = EngineConfig(max_batch_size=32, max_queue=4096, max_memory_turns=settings.VOYAGER_MEMORY_TURNS)
    return Engine(loaded, config).start()


def _ask_all(engine, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Submit worker-style request messages; wait for every terminal event."""
    from inference.engine import Error, Result
    from inference.service import request_from_message

    done: dict[str, Any] = {}
    cond = threading.Condition()

    def collect(event) -> None:
        if isinstance(event, (Result, Error)):
            with cond:
                done[event.request_id] = event
                cond.notify_all()

    for message in messages:
        engine.submit(request_from_message(message), collect)
    with cond:
        if not cond.wait_for(lambda: len(done) == len(messages), timeout=900):
            raise TimeoutError("the engine did not answer every simulated ask within 15 minutes")
    return done


def simulate_players(
    *,
    persona: Persona,
    replies: int,
    seed: int = 0,
    turns: int = 4,
    engine=None,
    rule: str = DEFAULT_RULE,
    log: Callable[[str], None] = lambda _m: None,
) -> SimulationReport:
    """Have scripted players talk ``replies`` times with the persona, store and rate every reply."""
    import time

    from inference.engine import Result
    from inference.service import result_fields

    started = time.monotonic()
    rng = random.Random(seed)
    own_engine = engine is None
    engine = engine or load_engine()
    base_id = "simulation"
    players, home = scripted_players(seed), persona_home(persona)
    liked = errors = made = 0
    run_tag = uuid.uuid4().hex[:8]
    try:
        while made < replies:
            wave = min(64, -(-(replies - made) // turns))
            conversations = []
            for i in range(wave):
                npc = Npc.objects.create(
                    world_id=f"sim-{persona.slug}-{run_tag}-{made}-{i}", persona=persona, display_name=persona.name
                )
                n = min(turns, replies - made - sum(len(c.questions) for c in conversations))
                if n <= 0:
                    npc.delete()
                    break
                conversations.append(
                    Conversation(npc, rng.choice(players), scripted_questions(persona, rng, n), scripted_context(rng))
                )
            for turn in range(max(len(c.questions) for c in conversations)):
                active = [c for c in conversations if turn < len(c.questions)]
                plans, messages = {}, []
                for k, conv in enumerate(active):
                    # The plan the gateway makes for any NPC (persona, active adapter, recent turns), asked as the
                    # persona's owner, who may use it whether it is public or not.
                    plan = gateway.ask_prepare(
                        server=None, user=persona.owner, npc_world_id=conv.npc.world_id, persona_slug=persona.slug
                    )
                    rid = f"sim-{run_tag}-{made}-{turn}-{k}"
                    plans[rid] = (conv, plan)
                    messages.append(
                        {
                            "request_id": rid,
                            **plan.request,
                            "player": conv.player,
                            "text": conv.questions[turn],
                            "context": conv.context,
                            "seed": rng.getrandbits(31),
                        }
                    )
                results = _ask_all(engine, messages)
                for rid, (conv, plan) in plans.items():
                    event = results[rid]
                    if not isinstance(event, Result):
                        errors += 1
                        continue
                    message = result_fields(event, base_id)
                    exchange, _ = gateway.exchange_record(
                        plan=plan,
                        player=conv.player,
                        text=conv.questions[turn],
                        context=conv.context,
                        result=message,
                        ttft_ms=event.ttft_ms,
                        total_ms=event.total_ms,
                        source=Exchange.Source.SIMULATION,
                    )
                    good = hidden_rule(event.text, conv.player, rule, home=home)
                    liked += good
                    rating_upsert(
                        exchange=exchange,
                        score=1 if good else -1,
                        player_name=conv.player,
                        reason="" if good else "simulated",
                        source=Rating.Source.GAME,
                    )
                    made += 1
            log(f"{made}/{replies} replies, {liked} liked")
    finally:
        if own_engine:
            engine.stop(drain=False, timeout=30)
    return SimulationReport(replies=made, liked=liked, errors=errors, seconds=time.monotonic() - started)


def battle_outcome(left_liked: bool, right_liked: bool) -> str:
    """How a player who holds the hidden rule votes on two replies."""
    if left_liked != right_liked:
        return "left" if left_liked else "right"
    return "tie" if left_liked else "both_bad"


def simulate_battles(
    *,
    persona: Persona,
    battles: int,
    seed: int = 0,
    engine=None,
    rule: str = DEFAULT_RULE,
    log: Callable[[str], None] = lambda _m: None,
) -> SimulationReport:
    """Scripted players start arena battles and vote by ``hidden_rule``: same-prompt pairs for DPO.

    Both sides are the persona's current version, sampled twice with different seeds (with one
    version there is nothing else to fight; two samples of one policy are what preference pairs
    are made of). Stored through ``agents_app.arena`` as the persona's owner, like the web arena.
    ``liked`` counts the battles with a winner.
    """
    import time
    from dataclasses import replace

    from agents_app import arena
    from inference.engine import Result
    from inference.service import result_fields

    started = time.monotonic()
    rng = random.Random(seed + 7_919)
    own_engine = engine is None
    engine = engine or load_engine()
    players, home = scripted_players(seed + 1), persona_home(persona)
    owner = persona.owner
    npc_id = f"sim-arena-{persona.slug}-{uuid.uuid4().hex[:8]}"
    made = decided = errors = 0
    try:
        while made < battles:
            wave = min(32, battles - made)
            plans, messages = [], []
            for k in range(wave):
                # No memory: both sides see one prompt, as in the web arena.
                plan = gateway.ask_prepare(
                    server=None, user=owner, npc_world_id=npc_id, persona_slug=persona.slug, with_memory=False
                )
                player, text = rng.choice(players), scripted_questions(persona, rng, 1)[0]
                battle = arena.BattlePlan(left=plan, right=replace(plan), text=text, player=player)
                plans.append(battle)
                for side in ("left", "right"):
                    messages.append(
                        {
                            "request_id": f"{npc_id}-{made + k}-{side}",
                            **plan.request,
                            "player": player,
                            "text": text,
                            "context": {},
                            "seed": rng.getrandbits(31),
                        }
                    )
            results = _ask_all(engine, messages)
            for k, battle in enumerate(plans):
                left, right = (results[f"{npc_id}-{made + k}-{side}"] for side in ("left", "right"))
                if not (isinstance(left, Result) and isinstance(right, Result)):
                    errors += 1
                    continue
                record = arena.battle_record(
                    user=owner,
                    plan=battle,
                    left=result_fields(left, "simulation"),
                    right=result_fields(right, "simulation"),
                    total_ms=max(left.total_ms or 0, right.total_ms or 0),
                    source=Exchange.Source.SIMULATION,
                )
                outcome = battle_outcome(
                    hidden_rule(left.text, battle.player, rule, home=home),
                    hidden_rule(right.text, battle.player, rule, home=home),
                )
                arena.battle_vote(user=owner, battle_id=record.pk, outcome=outcome)
                decided += outcome in ("left", "right")
            made += wave
            log(f"{made}/{battles} battles, {decided} with a winner")
    finally:
        if own_engine:
            engine.stop(drain=False, timeout=30)
    return SimulationReport(replies=made, liked=decided, errors=errors, seconds=time.monotonic() - started)


_probe_ids: dict[str, int] = {}


def _probe_id(path: str) -> int:
    """An adapter id of its own per directory: the engine keeps loaded adapters by id, so two
    directories under one id would answer with whichever was loaded first."""
    return _probe_ids.setdefault(str(path), 10**9 + len(_probe_ids))


def rule_rate(
    *, persona: Persona, n: int, seed: int, adapter_path: str | None = None, engine=None, rule: str = DEFAULT_RULE
) -> tuple[float, list[dict[str, Any]]]:
    """The hidden-rule rate on fresh single-turn prompts, nothing stored. Returns (rate, samples)."""
    from inference.engine import Result

    rng = random.Random(seed)
    players, home = scripted_players(seed), persona_home(persona)
    own_engine = engine is None
    engine = engine or load_engine()
    payload = gateway.persona_payload(persona)
    adapter = {"id": _probe_id(adapter_path), "version": 1, "path": adapter_path} if adapter_path else None
    try:
        messages = []
        for i in range(n):
            messages.append(
                {
                    "request_id": f"rate-{seed}-{i}",
                    "persona": payload,
                    "adapter": adapter,
                    "memory": [],
                    "player": rng.choice(players),
                    "text": scripted_questions(persona, rng, 1)[0],
                    "context": scripted_context(rng),
                    "seed": rng.getrandbits(31),
                }
            )
        results = _ask_all(engine, messages)
    finally:
        if own_engine:
            engine.stop(drain=False, timeout=30)
    samples = []
    for m in messages:
        event = results[m["request_id"]]
        ok = isinstance(event, Result)
        text = event.text if ok else ""
        liked = hidden_rule(text, m["player"], rule, home=home)
        sample = {"player": m["player"], "text": m["text"], "reply": text, "liked": liked}
        # What the model saw and wrote, for whoever scores the replies (the benchmark's fluency).
        sample.update(prompt=event.prompt_text if ok else "", raw=event.raw_text if ok else "")
        samples.append(sample)
    return sum(s["liked"] for s in samples) / max(1, n), samples
