"""Battles between two versions of one persona (Chatbot Arena's method, for NPC versions).

A player's words go to two versions at once, in one message to one worker so that the engine
batches them (``inference.client.WorkerClient.send_batch``). The sides are drawn at random and
the page learns only "left" and "right" until the vote; ``battle_vote`` names the versions.
Both replies are stored as exchanges of one arena NPC with no memory, so the two prompts are the
same text: a vote with a preference is a same-prompt pair for the nightly DPO stage
(``training_tasks.dataset``). ``leaderboard`` ranks each persona's versions by a Bradley–Terry
fit of the decided battles (``agents_app.bradley_terry``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from django.db import IntegrityError, transaction
from django.utils import timezone

from agents_app import bradley_terry, gateway
from agents_app.gateway import adapter_ref
from agents_app.models import AdapterVersion, Battle, Exchange, PairwiseVote, Persona
from agents_app.services import ServiceError

MAX_BATTLE_TEXT = 500
BASE_MODEL = 0  # the version number that stands for the base model with no adapter
# The versions that may answer a battle besides the base model: those that answer, or may, live.
FIGHTING = (AdapterVersion.Status.ACTIVE, AdapterVersion.Status.CANARY, AdapterVersion.Status.APPROVED)
SCORES = {Battle.Outcome.LEFT: 1.0, Battle.Outcome.RIGHT: 0.0, Battle.Outcome.TIE: 0.5}


def version_label(adapter: AdapterVersion | None) -> str:
    return "base model" if adapter is None else f"v{adapter.version}"


def battle_choices(persona: Persona) -> list[AdapterVersion | None]:
    """The versions that may fight, newest first, then the base model (None)."""
    return [*AdapterVersion.objects.filter(persona=persona, status__in=FIGHTING).order_by("-version"), None]


def battle_versions(
    persona: Persona, a: int | None = None, b: int | None = None
) -> tuple[AdapterVersion | None, AdapterVersion | None]:
    """The two versions of a battle: ``a`` and ``b`` by number (0: the base model), or by default the
    active version (the base model if none) against the canary, else the newest other version."""
    choices = {BASE_MODEL if v is None else v.version: v for v in battle_choices(persona)}
    for name, number in (("a", a), ("b", b)):
        if number is not None and number not in choices:
            known = ", ".join(str(n) for n in sorted(choices))
            raise ServiceError(
                f"{name}: v{number} of {persona.slug} cannot battle (one of {known}; 0 is the base model)"
            )
    active = next((v for v in choices.values() if v is not None and v.status == AdapterVersion.Status.ACTIVE), None)
    first = choices[a] if a is not None else active
    if b is not None:
        second = choices[b]
    else:
        others = [v for v in choices.values() if v != first]
        if not others:
            raise ServiceError(f"persona: {persona.slug} has only one version; a battle needs two")
        second = next((v for v in others if v is not None and v.status == AdapterVersion.Status.CANARY), others[0])
    if first == second:
        raise ServiceError("b: must be a different version from a (a is the active version unless chosen)")
    return first, second


@dataclass
class BattlePlan:
    """The two asks of one battle, as the page shows them (left, right), and the words asked."""

    left: gateway.AskPlan
    right: gateway.AskPlan
    text: str
    player: str


def arena_npc_id(user, persona: Persona) -> str:
    return f"arena:{user.pk}:{persona.slug}"


def battle_prepare(
    *, user, persona: Persona, text: str, player: str, a: int | None = None, b: int | None = None, rng=random
) -> BattlePlan:
    """Plan both asks: the same persona, words and (empty) memory, two versions on random sides.

    ``persona`` is one the user may use (the caller's permission-checked lookup).
    """
    text = (text or "").strip()
    if not text:
        raise ServiceError("text: say something for the two versions to answer")
    if len(text) > MAX_BATTLE_TEXT:
        raise ServiceError(f"text: at most {MAX_BATTLE_TEXT} characters, not {len(text)}")
    first, second = battle_versions(persona, a, b)
    # No memory: both versions see exactly one prompt, so the vote is a same-prompt pair.
    plan = gateway.ask_prepare(
        server=None, user=user, npc_world_id=arena_npc_id(user, persona), persona_slug=persona.slug, with_memory=False
    )
    sides = [first, second]
    rng.shuffle(sides)
    left, right = (
        replace(plan, adapter_version_id=v.pk if v else None, request={**plan.request, "adapter": adapter_ref(v)})
        for v in sides
    )
    return BattlePlan(left=left, right=right, text=text, player=player)


def battle_record(
    *, user, plan: BattlePlan, left: dict, right: dict, total_ms: float, source: str = Exchange.Source.ARENA
) -> Battle:
    """Store both replies and the battle in one transaction: both sides, or neither."""
    with transaction.atomic():
        exchanges = [
            gateway.exchange_record(
                plan=side,
                player=plan.player,
                text=plan.text,
                context={"arena": True},
                result=result,
                ttft_ms=None,
                total_ms=total_ms,
                source=source,
            )[0]
            for side, result in ((plan.left, left), (plan.right, right))
        ]
        return Battle.objects.create(
            persona_id=plan.left.persona_id, user=user, player_text=plan.text, left=exchanges[0], right=exchanges[1]
        )


def battle_vote(*, user, battle_id, outcome: str) -> Battle:
    """The battle's player votes once; a preference (or tie, or both bad) is also a PairwiseVote."""
    if outcome not in Battle.Outcome.values:
        raise ServiceError(f"outcome: must be one of {', '.join(Battle.Outcome.values)}, not {outcome!r}")
    with transaction.atomic():
        battle = (
            Battle.objects.select_for_update(of=("self",))
            .select_related("left__adapter_version", "right__adapter_version")
            .filter(pk=battle_id, user=user)
            .first()
            if user.is_authenticated
            else None
        )
        if battle is None:
            raise ServiceError(f"battle: no battle {battle_id} of yours", code="not_found")
        if battle.outcome:
            raise ServiceError(f"battle: already voted {battle.outcome}; the versions are shown")
        if outcome != Battle.Outcome.SKIP:
            battle.vote = _pairwise_vote(user, battle.left, battle.right, outcome)
        battle.outcome, battle.voted_at = outcome, timezone.now()
        battle.save(update_fields=["outcome", "voted_at", "vote"])
    return battle


def _pairwise_vote(user, left: Exchange, right: Exchange, outcome: str) -> PairwiseVote:
    # Stored once per pair in a canonical order, as every pairwise vote is (portal.services).
    if str(left.pk) > str(right.pk):
        left, right = right, left
        outcome = {"left": "right", "right": "left"}.get(outcome, outcome)
    try:
        with transaction.atomic():
            vote, _ = PairwiseVote.objects.update_or_create(
                voter=user, left=left, right=right, defaults={"outcome": outcome}
            )
    except IntegrityError:
        vote = PairwiseVote.objects.get(voter=user, left=left, right=right)
        vote.outcome = outcome
        vote.save(update_fields=["outcome"])
    return vote


def battle_reveal(battle: Battle) -> dict[str, str]:
    """What the page may show once the battle is voted: which version answered on each side."""
    if not battle.outcome:
        raise ServiceError("battle: the versions are shown after the vote")
    return {
        "left": version_label(battle.left.adapter_version),
        "right": version_label(battle.right.adapter_version),
    }


@dataclass
class Standing:
    """One version's place on its persona's board."""

    label: str
    version: AdapterVersion | None
    rating: bradley_terry.Rating


def leaderboard(personas, *, rounds: int = 200) -> list[tuple[Persona, list[Standing]]]:
    """Each persona's versions by Bradley–Terry rating over its decided battles (ties half a win)."""
    boards = []
    for persona in personas:
        battles = Battle.objects.filter(persona=persona, outcome__in=list(SCORES)).select_related(
            "left__adapter_version", "right__adapter_version"
        )
        votes, versions = [], {}
        for battle in battles:
            a, b = battle.left.adapter_version, battle.right.adapter_version
            if a == b:
                continue  # one version against itself says nothing about versions
            key_a, key_b = (a.pk if a else BASE_MODEL), (b.pk if b else BASE_MODEL)
            versions[key_a], versions[key_b] = a, b
            votes.append(bradley_terry.Vote(key_a, key_b, SCORES[battle.outcome]))
        if not votes:
            continue
        ranked = bradley_terry.ratings(votes, rounds=rounds, seed=persona.pk)
        boards.append((persona, [Standing(version_label(versions[r.item]), versions[r.item], r) for r in ranked]))
    return boards
