"""Writes to the game-facing domain. Views, consumers and tasks call these."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents_app.models import Exchange, GameServer, Persona, Rating

DEMO_PERSONA_SLUG = "bram"
DEMO_SERVER_NAME = "Demo server"


class ServiceError(Exception):
    """A request that cannot be carried out, with a message fit to show the caller."""

    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        if code:
            self.code = code


@transaction.atomic
def game_server_create(*, name: str, owner) -> tuple[GameServer, str]:
    """Register a game server. Returns it and its token in the clear, shown to the owner once."""
    server = GameServer(name=name, owner=owner)
    raw = server.set_new_token()
    server.full_clean()
    server.save()
    return server, raw


@transaction.atomic
def game_server_rotate_token(*, server: GameServer) -> str:
    raw = server.set_new_token()
    server.save(update_fields=["token_hash", "token_hint"])
    return raw


def game_server_authenticate(raw_token: str | None) -> GameServer | None:
    """The enabled server this token belongs to, or None. Looked up by hash, never by raw value."""
    if not raw_token or not raw_token.startswith(GameServer.TOKEN_PREFIX) or len(raw_token) > 200:
        return None
    server = GameServer.objects.filter(token_hash=GameServer.hash_token(raw_token), enabled=True).first()
    if server is None or not server.verify_token(raw_token):
        return None
    return server


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
    """Record or change a rater's rating of an exchange. Returns (rating, created)."""
    if score not in (1, -1):
        raise ServiceError(f"score must be 1 or -1, not {score!r}")
    if (user is None) == (not player_name):
        raise ServiceError("a rating needs exactly one rater: a portal user or a player name")
    rater = {"user": user} if user is not None else {"user": None, "player_name": player_name}
    defaults = {"score": score, "reason": reason[:500], "tags": list(tags or []), "source": source}
    try:
        # The partial unique constraints make this safe against two concurrent raters' requests.
        rating, created = Rating.objects.select_for_update().update_or_create(
            exchange=exchange, **rater, defaults=defaults
        )
    except IntegrityError:
        # A concurrent insert won the race; ours becomes an update.
        rating = Rating.objects.select_for_update().get(exchange=exchange, **rater)
        for key, value in defaults.items():
            setattr(rating, key, value)
        rating.save()
        created = False
    return rating, created


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
