"""Templated NPC dialogues that teach the starter model its prompt format.

The data lives in ``inference/corpus/*.json`` (personas, world vocabulary,
intents with question and reply templates). ``generate_dialogues(n, seed)``
draws ``n`` dialogues from it with a private ``random.Random(seed)``, so the
same seed always yields the same text. ``render_training_text`` turns one into
the exact string the model should learn: the prompt from
``inference.prompt.render_starter`` followed by the reply and ``<|end|>``.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .prompt import END, GameContext, PersonaSpec, Turn, render_starter, time_word

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"


@dataclass(frozen=True)
class Dialogue:
    persona: PersonaSpec
    memory: tuple[Turn, ...]
    context: GameContext
    player: str
    text: str
    reply: str


@lru_cache(maxsize=1)
def load_corpus_data() -> dict[str, Any]:
    return {
        name: json.loads((CORPUS_DIR / f"{name}.json").read_text(encoding="utf-8"))
        for name in ("personas", "world", "intents")
    }


def corpus_digest() -> str:
    """Fingerprint of the corpus files, recorded in voyager.json."""
    h = hashlib.sha256()
    for name in ("personas", "world", "intents"):
        h.update((CORPUS_DIR / f"{name}.json").read_bytes())
    return h.hexdigest()


def persona_specs() -> list[PersonaSpec]:
    return [
        PersonaSpec(slug=p["slug"], name=p["name"], system_prompt=p["system_prompt"], traits=tuple(p["traits"]))
        for p in load_corpus_data()["personas"]
    ]


def _exchange(rng: random.Random, persona: dict[str, Any], player: str, time_of_day: float) -> tuple[str, str]:
    data = load_corpus_data()
    world = data["world"]
    intent = rng.choice(data["intents"])
    direction = rng.choice(world["directions"])
    steps = rng.randint(1, 4)
    fill = {
        "player": player,
        "name": persona["name"],
        "home": persona["home"],
        "item": rng.choice(persona["inventory"]),
        "n": str(rng.randint(1, 5)),
        "place": rng.choice(world["places"]),
        "dir": direction["words"],
        "x": str(direction["dx"] * steps),
        "z": str(direction["dz"] * steps),
        "time": time_word(time_of_day),
        "trait": rng.choice(persona["traits"]),
    }
    # Persona phrases may themselves mention the player.
    fill["greeting"] = rng.choice(persona["greetings"]).format(**fill)
    fill["catch"] = rng.choice(persona["catchphrases"]).format(**fill)
    fill["yes"] = rng.choice(persona["yes"])
    fill["no"] = rng.choice(persona["no"])
    question = rng.choice(intent["questions"]).format(**fill)
    if rng.random() < 0.3:
        question = question.capitalize()
    reply = rng.choice(intent["replies"]).format(**fill)
    return question, reply


def _context(rng: random.Random, time_of_day: float) -> GameContext:
    world = load_corpus_data()["world"]
    if rng.random() < 0.2:
        return GameContext()
    pos = (rng.randint(-300, 300), rng.randint(-20, 60), rng.randint(-300, 300))
    nearby = tuple(rng.sample(world["things_nearby"] + world["players"], rng.randint(0, 4)))
    return GameContext(pos=pos, time_of_day=time_of_day, nearby=nearby)


def generate_dialogues(n: int, seed: int = 0) -> list[Dialogue]:
    rng = random.Random(seed)
    data = load_corpus_data()
    personas = data["personas"]
    specs = {s.slug: s for s in persona_specs()}
    out = []
    for _ in range(n):
        persona = rng.choice(personas)
        player = rng.choice(data["world"]["players"])
        time_of_day = round(rng.random(), 2)
        memory = tuple(
            Turn(player, *_exchange(rng, persona, player, time_of_day)) for _ in range(rng.choice((0, 0, 1, 2, 3)))
        )
        text, reply = _exchange(rng, persona, player, time_of_day)
        out.append(Dialogue(specs[persona["slug"]], memory, _context(rng, time_of_day), player, text, reply))
    return out


def render_training_text(d: Dialogue) -> str:
    return render_starter(d.persona, d.memory, d.context, d.player, d.text) + d.reply + END + "\n"
