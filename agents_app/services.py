"""Writes to the game-facing domain. Views, consumers and tasks call these."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import IntegrityError, transaction
from django.db.models.deletion import ProtectedError
from django.utils import timezone

from agents_app.models import (
    Exchange,
    ExchangeRatings,
    GameServer,
    Persona,
    PersonaDayRatings,
    PersonaShare,
    Rating,
    rating_counts_change,
    rating_day,
)

DEMO_PERSONA_SLUG = "bram"
DEMO_SERVER_NAME = "Demo server"


class ServiceError(Exception):
    """A request that cannot be carried out, with a message fit to show the caller."""

    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        if code:
            self.code = code


class InvalidFields(ServiceError):
    """Bad input, field by field: ``fields`` maps each field's name to its messages."""

    def __init__(self, fields: dict[str, list[str]]):
        self.fields = fields
        super().__init__("; ".join(f"{name}: {' '.join(messages)}" for name, messages in fields.items()))

    @classmethod
    def from_validation_error(cls, exc: ValidationError, *, whole: str) -> InvalidFields:
        """From ``full_clean()``'s errors; the ones about no one field are put under ``whole``."""
        fields: dict[str, list[str]] = {}
        for name, messages in exc.message_dict.items():
            fields.setdefault(whole if name == NON_FIELD_ERRORS else name, []).extend(messages)
        return cls(fields)


def _full_clean(instance, *, whole: str) -> None:
    try:
        instance.full_clean()
    except ValidationError as exc:
        raise InvalidFields.from_validation_error(exc, whole=whole) from None


# --- game servers ---------------------------------------------------------------------------------

MAX_GAME_SERVERS_PER_OWNER = 20


@transaction.atomic
def game_server_create(*, name: str, owner) -> tuple[GameServer, str]:
    """Register a game server. Returns it and its token in the clear, shown to the owner once."""
    name = (name or "").strip()
    if GameServer.objects.filter(owner=owner, enabled=True).count() >= MAX_GAME_SERVERS_PER_OWNER:
        raise InvalidFields(
            {"name": [f"you have {MAX_GAME_SERVERS_PER_OWNER} servers already; revoke one before adding another"]}
        )
    same_name = GameServer.objects.filter(owner=owner, name=name).first()
    if same_name is not None:
        kept = " (revoked, kept for its conversations)" if not same_name.enabled else ""
        raise InvalidFields({"name": [f"you already have a server named {name!r}{kept}; choose another name"]})
    server = GameServer(name=name, owner=owner)
    raw = server.set_new_token()
    _full_clean(server, whole="name")
    try:
        with transaction.atomic():
            server.save()
    except IntegrityError:  # the same name, registered by a concurrent request
        raise InvalidFields({"name": [f"you already have a server named {name!r}"]}) from None
    return server, raw


@transaction.atomic
def game_server_rotate_token(*, server: GameServer) -> str:
    """A new token for the server; the old one stops working at once. Returns it, shown once."""
    raw = server.set_new_token()
    server.save(update_fields=["token_hash", "token_hint"])
    return raw


@transaction.atomic
def game_server_revoke(*, server: GameServer) -> bool:
    """Stop the server's token from working. Returns True when the server is deleted outright.

    A server none of whose NPCs has a conversation on record is deleted (with its NPCs). One with
    conversations is kept, disabled and holding a token nobody has seen, because exchanges (and
    the ratings and training data hanging off them) are never deleted.
    """
    server = GameServer.objects.select_for_update().get(pk=server.pk)
    if not Exchange.objects.filter(npc__game_server=server).exists():
        try:
            with transaction.atomic():
                server.delete()
            return True
        except ProtectedError:  # an NPC answered between the check and the delete
            pass
    server.set_new_token()  # the raw value is dropped here: no one can ever use it
    server.enabled = False
    server.save(update_fields=["token_hash", "token_hint", "enabled"])
    return False


def game_server_authenticate(raw_token: str | None) -> GameServer | None:
    """The enabled server this token belongs to, or None. Looked up by hash, never by raw value."""
    if not raw_token or not raw_token.startswith(GameServer.TOKEN_PREFIX) or len(raw_token) > 200:
        return None
    server = GameServer.objects.filter(token_hash=GameServer.hash_token(raw_token), enabled=True).first()
    if server is None or not server.verify_token(raw_token):
        return None
    return server


# --- personas -------------------------------------------------------------------------------------

# The same bounds as the REST API's persona input.
MAX_TRAITS, MAX_TRAIT_CHARS = 20, 80
MAX_ACTIONS, MAX_ACTION_CHARS = 40, 40
ACTION_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # what the gateway parses as an action name
RESERVED_PERSONA_SLUGS = frozenset({"new"})  # /personas/new/ is the page that creates one
PERSONA_EDITABLE = (
    "name",
    "description",
    "traits",
    "system_prompt",
    "allowed_actions",
    "temperature",
    "top_p",
    "max_tokens",
    "repetition_penalty",
    "is_public",
)


def _clean_traits(traits) -> list[str]:
    if isinstance(traits, str) or not isinstance(traits, list | tuple):
        raise InvalidFields({"traits": ["must be a list of short phrases"]})
    cleaned = []
    for trait in traits:
        trait = str(trait).strip()
        if len(trait) > MAX_TRAIT_CHARS:
            raise InvalidFields({"traits": [f"{trait[:20]!r}... is over {MAX_TRAIT_CHARS} characters"]})
        if trait and trait not in cleaned:
            cleaned.append(trait)
    if len(cleaned) > MAX_TRAITS:
        raise InvalidFields({"traits": [f"at most {MAX_TRAITS} traits, not {len(cleaned)}"]})
    return cleaned


def _clean_actions(actions) -> list[str]:
    if isinstance(actions, str) or not isinstance(actions, list | tuple):
        raise InvalidFields({"allowed_actions": ["must be a list of action names"]})
    cleaned = []
    for action in actions:
        action = str(action).strip()
        if not action:
            continue
        if len(action) > MAX_ACTION_CHARS or not ACTION_NAME_RE.match(action):
            raise InvalidFields(
                {
                    "allowed_actions": [
                        f"{action[:MAX_ACTION_CHARS]!r} is not an action name (letters, digits and "
                        f"'_', not starting with a digit, at most {MAX_ACTION_CHARS} characters)"
                    ]
                }
            )
        if action not in cleaned:
            cleaned.append(action)
    if len(cleaned) > MAX_ACTIONS:
        raise InvalidFields({"allowed_actions": [f"at most {MAX_ACTIONS} actions, not {len(cleaned)}"]})
    return cleaned


def _persona_save(persona: Persona) -> Persona:
    """Check every field (all the problems at once, each under its field's name), then save."""
    errors: dict[str, list[str]] = {}
    for field, clean in (("traits", _clean_traits), ("allowed_actions", _clean_actions)):
        try:
            setattr(persona, field, clean(getattr(persona, field)))
        except InvalidFields as exc:
            errors.update(exc.fields)
    for field in ("temperature", "top_p", "repetition_penalty"):  # NaN slips past the range validators
        value = getattr(persona, field)
        if isinstance(value, float) and not math.isfinite(value):
            errors[field] = ["must be a finite number"]
    if (
        persona.slug in RESERVED_PERSONA_SLUGS
        or Persona.objects.filter(slug=persona.slug).exclude(pk=persona.pk).exists()
    ):
        errors["slug"] = [f"{persona.slug!r} is taken; choose another"]
    try:
        persona.full_clean(exclude=list(errors))
    except ValidationError as exc:
        for field, messages in InvalidFields.from_validation_error(exc, whole="persona").fields.items():
            errors.setdefault(field, []).extend(messages)
    if errors:
        raise InvalidFields(errors)
    try:
        with transaction.atomic():
            persona.save()
    except IntegrityError:
        if Persona.objects.filter(slug=persona.slug).exclude(pk=persona.pk).exists():  # a concurrent create won
            raise InvalidFields({"slug": [f"{persona.slug!r} is taken; choose another"]}) from None
        raise
    return persona


@transaction.atomic
def persona_create(
    *,
    owner,
    slug: str,
    name: str,
    description: str = "",
    traits: list[str] | None = None,
    system_prompt: str = "",
    allowed_actions: list[str] | None = None,
    temperature: float = 0.8,
    top_p: float = 0.95,
    max_tokens: int = 64,
    repetition_penalty: float = 1.15,
    is_public: bool = True,
) -> Persona:
    """A new persona owned by ``owner``; the caller has checked that they may create one."""
    persona = Persona(
        owner=owner,
        slug=(slug or "").strip(),
        name=(name or "").strip(),
        description=description,
        traits=[] if traits is None else traits,
        system_prompt=system_prompt,
        allowed_actions=[] if allowed_actions is None else allowed_actions,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        repetition_penalty=repetition_penalty,
        is_public=is_public,
    )
    return _persona_save(persona)


@transaction.atomic
def persona_update(*, persona: Persona, **changes) -> Persona:
    """Change a persona's settings (not its slug: NPCs and adapters refer to it). All or nothing."""
    unknown = sorted(set(changes) - set(PERSONA_EDITABLE))
    if unknown:
        raise InvalidFields({name: ["cannot be changed"] for name in unknown})
    persona = Persona.objects.select_for_update().get(pk=persona.pk)
    for name, value in changes.items():
        setattr(persona, name, value.strip() if name == "name" else value)
    return _persona_save(persona)


# --- persona shares -------------------------------------------------------------------------------

MAX_SHARES_PER_PERSONA = 100


def _server_to_share_with(persona: Persona, server_id) -> GameServer:
    try:
        server_id = int(server_id)
    except (TypeError, ValueError):
        raise InvalidFields({"server": [f"{str(server_id)[:20]!r} is not a game server's id (a number)"]}) from None
    server = GameServer.objects.filter(pk=server_id, enabled=True).first()
    if server is None:
        raise InvalidFields({"server": [f"there is no game server {server_id}; ask its owner for its id"]})
    if server.owner_id == persona.owner_id:
        raise InvalidFields({"server": [f"{server.name!r} is yours: your own servers use your personas already"]})
    return server


@transaction.atomic
def persona_share_add(*, persona: Persona, server_id) -> tuple[PersonaShare, bool]:
    """Let one more game server use ``persona`` while it is private. Returns (share, created); sharing
    again with the same server changes nothing. The caller has checked that the user owns the persona."""
    server = _server_to_share_with(persona, server_id)
    Persona.objects.select_for_update().filter(pk=persona.pk).first()  # one writer at a time counts the shares
    existing = PersonaShare.objects.filter(persona=persona, game_server=server).first()
    if existing is not None:
        existing.game_server = server
        return existing, False
    if PersonaShare.objects.filter(persona=persona).count() >= MAX_SHARES_PER_PERSONA:
        raise InvalidFields(
            {
                "server": [
                    f"{persona.slug!r} is shared with {MAX_SHARES_PER_PERSONA} servers; stop sharing with one first"
                ]
            }
        )
    return PersonaShare.objects.create(persona=persona, game_server=server), True


@transaction.atomic
def persona_share_remove(*, persona: Persona, server_id: int) -> None:
    """The server may no longer use ``persona`` (unless it is public, or its owner's): its NPCs' next
    asks are answered as for an unknown persona. The caller has checked that the user owns the persona."""
    deleted, _ = PersonaShare.objects.filter(persona=persona, game_server_id=server_id).delete()
    if not deleted:
        raise ServiceError(f"server: {persona.slug!r} is not shared with server {server_id}", code="not_found")


@transaction.atomic
def rating_upsert(
    *,
    exchange: Exchange,
    score: int,
    user=None,
    player_name: str = "",
    reason: str = "",
    tags: list[str] | None = None,
    source: str = Rating.Source.WEB,
) -> tuple[Rating, bool]:
    """Record or change a rater's rating of an exchange. Returns (rating, created).

    The persona statistics (``PersonaDayRatings``, ``ExchangeRatings``) move in the same
    transaction: +1 for a new vote, the old vote out and the new one in for a changed one.
    """
    if score not in (1, -1):
        raise ServiceError(f"score must be 1 or -1, not {score!r}")
    if (user is None) == (not player_name):
        raise ServiceError("a rating needs exactly one rater: a portal user or a player name")
    rater = {"user": user} if user is not None else {"user": None, "player_name": player_name}
    defaults = {"score": score, "reason": reason[:500], "tags": list(tags or []), "source": source}
    # Locked, so the old score read here is the one this write replaces.
    rating = Rating.objects.select_for_update().filter(exchange=exchange, **rater).first()
    created = rating is None
    if created:
        try:
            with transaction.atomic():  # the partial unique constraints stop a concurrent twin insert
                rating = Rating.objects.create(exchange=exchange, **rater, **defaults)
        except IntegrityError:
            # A concurrent insert won the race; ours becomes an update of it.
            rating = Rating.objects.select_for_update().get(exchange=exchange, **rater)
            created = False
    old_score = None if created else rating.score
    if not created:
        for key, value in defaults.items():
            setattr(rating, key, value)
        rating.save()
    rating_counts_change(exchange=exchange, day=rating_day(rating), old_score=old_score, new_score=score)
    return rating, created


@transaction.atomic
def rating_stats_rebuild() -> tuple[int, int]:
    """Recompute the persona statistics from the ratings (after a bulk import, or to repair them).

    Returns (persona-day rows, rated exchanges). Rating writes wait while it runs, so nothing
    written meanwhile is counted twice or lost.
    """
    from django.db import connection
    from django.db.models import Count, F, Q, Sum
    from django.db.models.functions import TruncDate

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {Rating._meta.db_table} IN SHARE MODE")
    PersonaDayRatings.objects.all().delete()  # on SQLite, this write is what holds other writers off
    ExchangeRatings.objects.all().delete()
    counted = Rating.objects.filter(exchange__is_test=False)  # tests of unapproved versions are never counted
    days = (
        counted.values(
            persona_id=F("exchange__persona_id"),
            adapter_version_id=F("exchange__adapter_version_id"),
            day=TruncDate("created_at", tzinfo=timezone.get_default_timezone()),
        )
        .annotate(ups=Count("id", filter=Q(score=1)), downs=Count("id", filter=Q(score=-1)))
        .order_by()
    )
    day_rows = PersonaDayRatings.objects.bulk_create((PersonaDayRatings(**row) for row in days), batch_size=5000)
    exchanges = (
        counted.values("exchange_id", persona_id=F("exchange__persona_id"))
        .annotate(net=Sum("score"), total=Count("id"))
        .order_by()
    )
    exchange_rows = ExchangeRatings.objects.bulk_create((ExchangeRatings(**row) for row in exchanges), batch_size=5000)
    return len(day_rows), len(exchange_rows)


@dataclass
class BootstrapReport:
    admin_username: str | None = None
    admin_password: str | None = None
    persona: Persona | None = None
    persona_created: bool = False
    server: GameServer | None = None
    server_token: str | None = None


DEMO_PERSONA = {
    "name": "Bram the Miner",
    "description": "A cheerful dwarf-ish miner who knows every tunnel under the spawn hill "
    "and trades apples for good stories.",
    "traits": ["cheerful", "knows the mines", "generous with apples", "a bit forgetful"],
    "system_prompt": "You are Bram, a miner in a voxel world. You are friendly and brief. "
    "You help players find ores and give them apples when they are hungry.",
    "allowed_actions": ["say", "jump", "face", "follow", "stop_following", "move", "give"],
    # A 135M model chooses an action, or its own name, with its first token: less chance, fewer slips.
    "temperature": 0.5,
}


@transaction.atomic
def demo_bootstrap(*, admin_username: str = "admin") -> BootstrapReport:
    """Create what a newcomer needs on first run: an administrator, a demo persona and server.

    Idempotent: a second run creates nothing and reveals no secret again.
    """
    import secrets

    report = BootstrapReport()
    User = get_user_model()
    admin = User.objects.filter(is_superuser=True).order_by("pk").first()
    if admin is None:
        password = secrets.token_urlsafe(12)
        admin = User.objects.create_superuser(username=admin_username, email="", password=password)
        report.admin_username, report.admin_password = admin_username, password
    persona, report.persona_created = Persona.objects.get_or_create(
        slug=DEMO_PERSONA_SLUG, defaults={**DEMO_PERSONA, "owner": admin}
    )
    report.persona = persona
    server = GameServer.objects.filter(name=DEMO_SERVER_NAME).first()
    if server is None:
        server, report.server_token = game_server_create(name=DEMO_SERVER_NAME, owner=admin)
    report.server = server
    return report


def npc_touch(npc) -> None:
    type(npc).objects.filter(pk=npc.pk).update(last_active_at=timezone.now())
