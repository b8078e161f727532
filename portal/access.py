"""Permission-checked lookups, one place per object type (Zulip's access_<thing>).

Every view, API endpoint and consumer fetches through these, so none can forget a check.
A thing the user may not see raises ``Http404``-like ``AccessDenied(not_found=True)``: we do
not tell strangers that a private persona exists.
"""

from __future__ import annotations

import uuid

from django.db.models import Q, QuerySet

from agents_app import visibility
from agents_app.models import AdapterVersion, Exchange, GameServer, PairwiseVote, Persona, Rating, TrainingRun
from agents_app.roles import CAN_APPROVE, CAN_CREATE_PERSONA, CAN_MODERATE, CAN_UPLOAD
from agents_app.services import ServiceError

PUBLIC_ADAPTER_STATUSES = (
    AdapterVersion.Status.APPROVED,
    AdapterVersion.Status.ACTIVE,
    AdapterVersion.Status.CANARY,  # it answers live asks, as the active version does
    AdapterVersion.Status.RETIRED,
)


class AccessDenied(ServiceError):
    code = "forbidden"


class NotFound(ServiceError):
    code = "not_found"


def is_moderator(user) -> bool:
    return bool(user and user.is_authenticated and user.has_perm(CAN_MODERATE))


# --- personas -----------------------------------------------------------------------------------


def visible_personas(user) -> QuerySet[Persona]:
    """Public personas, the user's own, and every one for a moderator (``agents_app.visibility``)."""
    return Persona.objects.filter(visibility.visible_to_user(user))


def access_persona(slug: str, user) -> Persona:
    persona = visible_personas(user).select_related("active_adapter", "owner").filter(slug=slug).first()
    if persona is None:
        raise NotFound(f"persona: no persona named {slug!r}")
    return persona


def can_create_persona(user) -> bool:
    return bool(user.is_authenticated and user.has_perm(CAN_CREATE_PERSONA))


def require_persona_creator(user) -> None:
    if not can_create_persona(user):
        raise AccessDenied("persona: only modders may create personas (ask for the modder role on your profile)")


def can_edit_persona(user, persona: Persona) -> bool:
    return bool(user.is_authenticated and persona.owner_id == user.pk and user.has_perm("agents_app.change_persona"))


def access_persona_for_edit(slug: str, user) -> Persona:
    persona = access_persona(slug, user)
    if not can_edit_persona(user, persona):
        raise AccessDenied(f"persona: only its owner (a modder) may change {slug!r}")
    return persona


# --- exchanges ----------------------------------------------------------------------------------


PLAYGROUND_PREFIX = "web:"  # playground exchanges' player_name; ':' never appears in a Luanti name


def playground_player_name(user) -> str:
    return f"{PLAYGROUND_PREFIX}{user.pk}"


def visible_exchanges(user) -> QuerySet[Exchange]:
    """The exchanges of the personas the user may see; tests of unapproved versions only to their tester
    and the moderators."""
    qs = Exchange.objects.filter(visibility.visible_to_user(user, via="persona__"))
    if is_moderator(user):
        return qs
    if user is not None and user.is_authenticated:
        return qs.filter(Q(is_test=False) | Q(player_name=playground_player_name(user)))
    return qs.filter(is_test=False)


def access_exchange(exchange_id, user) -> Exchange:
    try:
        pk = uuid.UUID(str(exchange_id))
    except ValueError:
        raise NotFound(f"exchange: {str(exchange_id)[:40]!r} is not an exchange id (a UUID)") from None
    exchange = visible_exchanges(user).select_related("persona").filter(pk=pk).first()
    if exchange is None:
        raise NotFound(f"exchange: no exchange {exchange_id}")
    return exchange


# --- adapter versions ---------------------------------------------------------------------------


def visible_adapter_versions(user) -> QuerySet[AdapterVersion]:
    qs = AdapterVersion.objects.all()
    if is_moderator(user):
        return qs
    public = Q(status__in=PUBLIC_ADAPTER_STATUSES, persona__is_public=True)
    if user is not None and user.is_authenticated:
        return qs.filter(public | Q(persona__owner=user))
    return qs.filter(public)


def access_adapter_version(persona_slug: str, version: int, user) -> AdapterVersion:
    adapter = (
        visible_adapter_versions(user)
        .select_related("persona")
        .filter(persona__slug=persona_slug, version=version)
        .first()
    )
    if adapter is None:
        raise NotFound(f"adapter: {persona_slug!r} has no version {version} you can see")
    return adapter


def access_adapter_for_download(persona_slug: str, version: int, user) -> AdapterVersion:
    adapter = access_adapter_version(persona_slug, version, user)
    if adapter.status not in PUBLIC_ADAPTER_STATUSES and not is_moderator(user):
        raise AccessDenied(f"adapter: version {version} is {adapter.status}; only approved versions are downloadable")
    return adapter


def can_upload_adapter(user, persona: Persona) -> bool:
    return bool(user.is_authenticated and user.has_perm(CAN_UPLOAD) and persona.owner_id == user.pk)


def can_approve_adapter(user) -> bool:
    return bool(user.is_authenticated and user.has_perm(CAN_APPROVE))


# --- game servers -------------------------------------------------------------------------------


def own_game_servers(user) -> QuerySet[GameServer]:
    """A user's own servers. Nobody else's, moderators included: they have the admin."""
    if not user.is_authenticated:
        return GameServer.objects.none()
    return GameServer.objects.filter(owner=user)


def access_game_server(server_id, user) -> GameServer:
    """One of the user's own servers; anyone else's is as unknown as one that does not exist."""
    server = own_game_servers(user).filter(pk=server_id).first()
    if server is None:
        raise NotFound(f"server: you have no server {server_id}")
    return server


def access_game_server_for_new_token(server_id, user) -> GameServer:
    server = access_game_server(server_id, user)
    if not server.enabled:
        raise AccessDenied(f"server: {server.name!r} is revoked; register a new server for a new token")
    return server


# --- ratings, votes, training runs --------------------------------------------------------------


def own_ratings(user) -> QuerySet[Rating]:
    if not user.is_authenticated:
        return Rating.objects.none()
    return Rating.objects.filter(user=user)


def own_pairwise_votes(user) -> QuerySet[PairwiseVote]:
    if not user.is_authenticated:
        return PairwiseVote.objects.none()
    return PairwiseVote.objects.filter(voter=user)


def visible_training_runs(user) -> QuerySet[TrainingRun]:
    if is_moderator(user):
        return TrainingRun.objects.all()
    if user is not None and user.is_authenticated:
        return TrainingRun.objects.filter(persona__owner=user)
    return TrainingRun.objects.none()


def require_rater(user) -> None:
    if not user.is_authenticated:
        raise AccessDenied("log in to rate replies")
    if not user.has_perm("agents_app.add_rating"):
        raise AccessDenied("your account has no role that may rate (ask a moderator for the player role)")
