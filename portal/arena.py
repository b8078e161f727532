"""The portal's side of arena battles and corrections: permission checks around ``agents_app``'s services."""

from __future__ import annotations

from agents_app import arena, corrections
from agents_app.arena import BASE_MODEL, FIGHTING, version_label
from agents_app.models import AdapterVersion, Correction
from portal import access
from portal.selectors import playground_player_name


def battle_prepare(*, user, persona_slug: str, text: str, a: int | None = None, b: int | None = None):
    """Two versions of a persona the user may see, ready to answer the same words (``agents_app.arena``)."""
    if not user.is_authenticated or not user.has_perm("agents_app.add_pairwisevote"):
        raise access.AccessDenied("log in with a player account to start a battle")
    persona = access.access_persona(persona_slug, user)
    return arena.battle_prepare(user=user, persona=persona, text=text, player=playground_player_name(user), a=a, b=b)


def battle_record(*, user, plan, left: dict, right: dict, total_ms: float):
    return arena.battle_record(user=user, plan=plan, left=left, right=right, total_ms=total_ms)


def battle_vote(*, user, battle_id, outcome: str):
    if not user.is_authenticated:
        raise access.AccessDenied("log in to vote")
    battle = arena.battle_vote(user=user, battle_id=battle_id, outcome=outcome)
    return battle, arena.battle_reveal(battle)


def version_boards(viewer):
    return arena.leaderboard(access.visible_personas(viewer).order_by("name"))


def correction_set(*, user, exchange_id, text: str) -> tuple[Correction, bool]:
    """A portal user writes the reply they wanted for an exchange they may see."""
    if not user.is_authenticated or not user.has_perm("agents_app.add_correction"):
        raise access.AccessDenied("log in with a player account to correct a reply")
    exchange = access.access_exchange(exchange_id, user)
    return corrections.correction_upsert(exchange=exchange, text=text, user=user, source=Correction.Source.WEB)


def battle_form_context(viewer) -> dict:
    """The compare page's battle form: the personas the viewer may use, and each one's versions."""
    personas = list(access.visible_personas(viewer).only("slug", "name").order_by("name"))
    fighting = (
        AdapterVersion.objects.select_related("persona")
        .filter(persona__in=personas, status__in=FIGHTING)
        .order_by("-version")
    )
    versions = [{"persona": v.persona.slug, "number": v.version, "label": version_label(v)} for v in fighting]
    versions += [{"persona": p.slug, "number": BASE_MODEL, "label": version_label(None)} for p in personas]
    return {"battle_personas": personas, "battle_versions": versions}
