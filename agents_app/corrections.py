"""Corrections: a player writes the reply the NPC should have given, a demonstration to learn from.

Written under a reply on the portal or in game (``/voyager teach <text>``: the ``teach`` frame).
The text may carry ``[[ACTION:name arg ...]]`` markup; every action must be one the persona may
take, and pass the policy's action rules, or the correction is refused with the reason. The
nightly snapshot (``training_tasks.dataset``) turns corrections into supervised examples: the
exchange's prompt, and the correction as the completion.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction

from agents_app import policy
from agents_app.models import Correction, Exchange, GameServer, PlayerLink
from agents_app.services import ServiceError
from inference.actions import MARKUP_OPEN, parse_actions
from inference.prompt import CONTROL_SPELLINGS
from inference.token_guard import SpellingGuard

MAX_CORRECTION_CHARS = 1000
# A correction becomes training text: a turn marker in it would teach the model to write one.
_CONTROL = SpellingGuard(CONTROL_SPELLINGS)


def correction_check(exchange: Exchange, text: str) -> tuple[str, str, list[dict]]:
    """(text, the words players would see, the actions) or a ServiceError naming what is wrong."""
    text = (text or "").strip()
    if not text:
        raise ServiceError("text: write the reply the NPC should have given")
    if len(text) > MAX_CORRECTION_CHARS:
        raise ServiceError(f"text: at most {MAX_CORRECTION_CHARS} characters, not {len(text)}")
    if _CONTROL.strip(text) != text:
        spelling = next((s for s in _CONTROL.spellings if s in text), "a control token")
        raise ServiceError(f"text: {spelling!r} is a turn marker of a model's chat format, not words an NPC says")
    shown, actions = parse_actions(text)
    if text.count(MARKUP_OPEN) != len(actions):
        raise ServiceError("text: an action is malformed; write it as [[ACTION:name arg ...]] with a name and ]]")
    persona = exchange.persona
    allowed = list(persona.allowed_actions or [])
    for action in actions:
        if action["name"] not in allowed:
            may = ", ".join(allowed) if allowed else "none"
            raise ServiceError(
                f"text: {persona.name} may not take the action {action['name']!r} (allowed: {may})",
                code="invalid",
            )
    verdict = policy.check_actions(persona, [dict(a) for a in actions])
    if verdict.blocked:
        first = verdict.blocked[0]
        raise ServiceError(f"text: the action {first['name']!r} is refused by the policy rule {first['rule']}")
    if not shown and not actions:
        raise ServiceError("text: write the reply the NPC should have given")
    return text, shown, [dict(a) for a in actions]


def correction_upsert(
    *, exchange: Exchange, text: str, source: str, user=None, player_name: str = ""
) -> tuple[Correction, bool]:
    """Store a player's correction of one exchange; a second one by the same player replaces it.

    Returns (correction, created). Exactly one of ``user`` and ``player_name`` names the author.
    """
    if (user is None) == (not player_name):
        raise ServiceError("author: a correction has exactly one author, a portal account or a player name")
    text, shown, actions = correction_check(exchange, text)
    author = {"user": user} if user is not None else {"user": None, "player_name": player_name}
    fields = {"text": text, "reply_text": shown, "actions": actions, "source": source}
    try:
        with transaction.atomic():
            return Correction.objects.update_or_create(exchange=exchange, **author, defaults=fields)
    except IntegrityError:  # two writes of the same author racing on the unique constraint
        Correction.objects.filter(exchange=exchange, **author).update(**fields)
        return Correction.objects.get(exchange=exchange, **author), False


def correction_from_game(*, server: GameServer, exchange_id, player: str, text: str) -> Correction:
    """``/voyager teach``: a player corrects a reply they got on this server (as their portal
    account, if their game name is linked to one)."""
    exchange = Exchange.objects.select_related("persona").filter(pk=exchange_id, npc__game_server=server).first()
    if exchange is None:
        raise ServiceError(f"exchange: no exchange {exchange_id} on this server", code="not_found")
    link = PlayerLink.objects.filter(player_name=player, verified_at__isnull=False).select_related("user").first()
    author = {"user": link.user} if link else {"player_name": player}
    correction, _ = correction_upsert(exchange=exchange, text=text, source=Correction.Source.GAME, **author)
    return correction
