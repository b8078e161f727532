"""Templated NPC dialogues: the starter model's training text and the real model's domain adaptation.

The data lives in ``inference/corpus/*.json``: personas, world vocabulary and
facts (items, places, dangers), intents with question and reply templates (a
reply answers every question of its intent), and a cast of extra names that
``generate_dialogues(..., cast=True)`` puts on the corpus roles, so a model
learns to take its name from the persona header instead of memorising nine.
``generate_dialogues(n, seed)`` draws from a private ``random.Random(seed)``:
the same seed always yields the same dialogues. ``render_training_text``
turns one into the starter model's training string.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .actions import parse_actions
from .prompt import END, GameContext, PersonaSpec, Turn, render_starter, time_word

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
CORPUS_FILES = ("personas", "world", "intents", "cast")


@dataclass(frozen=True)
class Dialogue:
    persona: PersonaSpec
    memory: tuple[Turn, ...]
    context: GameContext
    player: str
    text: str
    reply: str
    action: str | None = None  # the action the player asked for, if any


@lru_cache(maxsize=1)
def load_corpus_data() -> dict[str, Any]:
    return {name: json.loads((CORPUS_DIR / f"{name}.json").read_text(encoding="utf-8")) for name in CORPUS_FILES}


def corpus_digest() -> str:
    """Fingerprint of the corpus files, recorded in voyager.json."""
    h = hashlib.sha256()
    for name in CORPUS_FILES:
        h.update((CORPUS_DIR / f"{name}.json").read_bytes())
    return h.hexdigest()


def persona_specs() -> list[PersonaSpec]:
    return [
        PersonaSpec(slug=p["slug"], name=p["name"], system_prompt=p["system_prompt"], traits=tuple(p["traits"]))
        for p in load_corpus_data()["personas"]
    ]


def _exchange(
    rng: random.Random, persona: dict[str, Any], player: str, time_of_day: float
) -> tuple[str, str, str | None]:
    """One question and its in-character reply: (question, reply, the action the question asks for)."""
    data = load_corpus_data()
    world = data["world"]
    # Hard cases (rudeness, jailbreaks: orders that ask for no action) weigh more than the rest.
    intent = rng.choices(data["intents"], weights=[i.get("weight", 1) for i in data["intents"]])[0]
    direction = rng.choice(world["directions"])
    steps = rng.randint(1, 4)
    item = rng.choice(persona["inventory"])
    item_words = world["items"].get(item, item.split(":")[-1].replace("_", " "))
    fact = rng.choice(world["facts"])
    danger = rng.choice(world["dangers"])
    fill = {
        "player": player,
        "name": persona["name"],
        "home": persona["home"],
        "role_line": persona["role"],
        "item": item,
        "item_words": item_words,
        "item_plain": item_words.removeprefix("a ").removeprefix("an "),
        "n": str(rng.randint(1, 5)),
        "place": rng.choice(world["places"]),
        "dir": direction["words"],
        "x": str(direction["dx"] * steps),
        "z": str(direction["dz"] * steps),
        # "left", "forward": the NPC does not know which way it faces, so any short step will do.
        "side": rng.choice(world["sides"]),
        "sx": str(rng.choice(world["directions"])["dx"] or rng.choice((-1, 1))),
        "sz": str(rng.choice((-1, 0, 1))),
        "time": time_word(time_of_day),
        "trait": rng.choice(persona["traits"]),
        "topic": fact["topic"],
        "find": fact["find"],
        "use": fact["use"],
        "tip": fact["tip"],
        "danger": danger["topic"],
        "warn": danger["warn"],
        "yes": rng.choice(persona["yes"]),
        "no": rng.choice(persona["no"]),
    }
    for key in ("jailbreaks", "rude"):
        fill[key.removesuffix("s")] = rng.choice(world[key]).format(**fill)
    offtopic = rng.choice(world["offtopic"])
    fill["offtopic"], fill["about"] = offtopic["question"], offtopic["about"]
    # Persona phrases and the shared lines may themselves mention the player or the item.
    fill["greeting"] = rng.choice(persona["greetings"]).format(**fill)
    fill["catch"] = rng.choice(persona["catchphrases"]).format(**fill)
    for key, lines in world["lines"].items():
        fill[key] = rng.choice(lines).format(**fill, **_capitalized(fill))
    question = rng.choice(intent["questions"]).format(**fill)
    if rng.random() < 0.3:
        question = question.capitalize()
    action = intent["action"]
    if action is not None and action not in persona["actions"]:
        # Asked for what it cannot do, an NPC says so in character (the header lists its actions).
        return question, fill["cannot"], None
    reply = rng.choice(intent["replies"]).format(**fill, **_capitalized(fill))
    return question, reply, action


def draw_question(rng: random.Random, name: str, inventory: Sequence[str] = ()) -> str:
    """A player's question from the corpus for an NPC called ``name`` (simulated players ask these)."""
    data = load_corpus_data()
    persona = dict(rng.choice(data["personas"]), name=name, actions=data["world"]["actions"])
    if inventory:
        persona["inventory"] = list(inventory)
    player = rng.choice(data["world"]["players"])
    return _exchange(rng, persona, player, rng.random())[0]


def _capitalized(fill: dict[str, str]) -> dict[str, str]:
    """``{Place}`` for a reply that opens with ``{place}``."""
    return {key[0].upper() + key[1:]: value[:1].upper() + value[1:] for key, value in fill.items()}


def _cast_persona(rng: random.Random, persona: dict[str, Any]) -> dict[str, Any]:
    """A corpus role under a new name and a differently worded header."""
    cast = load_corpus_data()["cast"]
    first = rng.choice(cast["names"])
    name = f"{first} {rng.choice(cast['epithets'])}" if rng.random() < 0.3 else first
    prompt = persona["system_prompt"].replace(persona["name"], first)
    system_prompt = rng.choice(cast["prompt_styles"]).format(prompt=prompt, first=first)
    phrases = {key: [p.replace(persona["name"], first) for p in persona[key]] for key in ("greetings", "catchphrases")}
    return {**persona, **phrases, "slug": f"cast-{first.lower()}", "name": name, "system_prompt": system_prompt}


def _context(rng: random.Random, time_of_day: float) -> GameContext:
    world = load_corpus_data()["world"]
    if rng.random() < 0.6:
        return GameContext()
    pos = (rng.randint(-300, 300), rng.randint(-20, 60), rng.randint(-300, 300))
    nearby = tuple(rng.sample(world["things_nearby"] + world["players"], rng.randint(0, 3)))
    return GameContext(pos=pos, time_of_day=time_of_day, nearby=nearby)


def generate_dialogues(n: int, seed: int = 0, *, cast: bool = False) -> list[Dialogue]:
    """``n`` dialogues; with ``cast`` half of them put a corpus role under a name from the cast.

    Most personas may take every action of the world; one in four only some, so that a model
    learns to read its actions from the header.
    """
    rng = random.Random(seed)
    data = load_corpus_data()
    personas = data["personas"]
    every_action = data["world"]["actions"]
    out = []
    for _ in range(n):
        persona = rng.choice(personas)
        if cast and rng.random() < 0.5:
            persona = _cast_persona(rng, persona)
        actions = every_action if rng.random() < 0.75 else sorted(rng.sample(every_action, rng.randint(2, 5)))
        persona = {**persona, "actions": [a for a in every_action if a in actions]}
        player = rng.choice(data["world"]["players"])
        time_of_day = round(rng.random(), 2)
        # Memory holds what the player saw: the gateway keeps replies without their markup.
        memory = tuple(
            Turn(player, question, parse_actions(reply)[0])
            for question, reply, _ in (
                _exchange(rng, persona, player, time_of_day) for _ in range(rng.choice((0, 0, 0, 0, 1, 2)))
            )
        )
        text, reply, action = _exchange(rng, persona, player, time_of_day)
        spec = PersonaSpec(
            slug=persona["slug"],
            name=persona["name"],
            system_prompt=persona["system_prompt"],
            traits=tuple(persona["traits"]),
            actions=tuple(persona["actions"]),
        )
        out.append(Dialogue(spec, memory, _context(rng, time_of_day), player, text, reply, action))
    return out


def render_training_text(d: Dialogue) -> str:
    return render_starter(d.persona, d.memory, d.context, d.player, d.text) + d.reply + END + "\n"
