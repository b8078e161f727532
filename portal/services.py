"""Writes the portal makes: accounts, player links, web ratings, pairwise votes, the playground."""

from __future__ import annotations

import re

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction

from agents_app import gateway
from agents_app.models import AdapterVersion, Exchange, PairwiseVote, PlayerLink, Rating
from agents_app.roles import PLAYER, ensure_roles
from agents_app.services import ServiceError, rating_upsert
from portal import access
from portal.selectors import PLAYGROUND_STATUSES, REASON_TAGS, playground_player_name

# Luanti's own rule for player names (src/server.cpp): 1-20 of these characters.
PLAYER_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,20}$")
MAX_PLAYGROUND_TEXT = 500


@transaction.atomic
def user_signup(*, username: str, email: str, password: str):
    """A new account; every sign-up is a player."""
    user = get_user_model().objects.create_user(username=username, email=email, password=password)
    group = Group.objects.filter(name=PLAYER).first()
    if group is None:  # a database migrated before the roles existed
        ensure_roles()
        group = Group.objects.get(name=PLAYER)
    user.groups.add(group)
    return user


def player_link_request(*, user, player_name: str) -> str:
    """A one-time code for `/voyager link CODE` in game."""
    player_name = (player_name or "").strip()
    if not PLAYER_NAME_RE.match(player_name):
        raise ServiceError("player_name: a Luanti name is 1-20 letters, digits, '-' or '_'")
    taken = PlayerLink.objects.filter(player_name=player_name, verified_at__isnull=False).first()
    if taken is not None:
        if taken.user_id == user.pk:
            raise ServiceError(f"player_name: {player_name!r} is already linked to your account")
        raise ServiceError(f"player_name: {player_name!r} is already linked to another account")
    return gateway.player_link_start(user=user, player_name=player_name)


def _own_link(user, link_id) -> PlayerLink:
    try:
        link_id = int(link_id)
    except (TypeError, ValueError):
        raise ServiceError(f"link: {link_id!r} is not a link id") from None
    link = PlayerLink.objects.select_for_update().filter(pk=link_id, user=user).first()
    if link is None:
        raise access.NotFound(f"link: you have no link {link_id}")
    return link


@transaction.atomic
def player_link_set_public(*, user, link_id, show: bool) -> PlayerLink:
    link = _own_link(user, link_id)
    if show and not link.verified:
        raise ServiceError("link: confirm it in game first (`/voyager link CODE`), then choose to show it")
    link.show_publicly = bool(show)
    link.save(update_fields=["show_publicly"])
    return link


@transaction.atomic
def player_link_remove(*, user, link_id) -> None:
    _own_link(user, link_id).delete()


def clean_tags(tags) -> list[str]:
    tags = list(tags or [])
    unknown = [t for t in tags if t not in REASON_TAGS]
    if unknown:
        raise ServiceError(f"tags: unknown reason {unknown[0]!r}; choose from {', '.join(REASON_TAGS)}")
    return sorted(set(tags))


def parse_score(value) -> int:
    try:
        score = int(value)
    except (TypeError, ValueError):
        raise ServiceError(f"score: must be 1 (thumbs up) or -1 (thumbs down), not {value!r}") from None
    if score not in (1, -1):
        raise ServiceError(f"score: must be 1 (thumbs up) or -1 (thumbs down), not {score}")
    return score


def web_rating_set(*, user, exchange_id, score, tags=(), reason: str = "") -> tuple[Rating, bool]:
    """Rate (or re-rate) a reply from the portal."""
    access.require_rater(user)
    score = parse_score(score)
    tags = clean_tags(tags)
    reason = (reason or "").strip()
    if len(reason) > 500:
        raise ServiceError(f"reason: at most 500 characters, not {len(reason)}")
    exchange = access.access_exchange(exchange_id, user)
    return rating_upsert(exchange=exchange, score=score, user=user, reason=reason, tags=tags, source=Rating.Source.WEB)


@transaction.atomic
def web_rating_remove(*, user, exchange_id) -> bool:
    """Take back one's own rating of a reply (the undo beside the thumbs). False: there was none.

    The persona statistics follow through the rating's post_delete handler, in this transaction.
    """
    access.require_rater(user)
    exchange = access.access_exchange(exchange_id, user)
    rating = Rating.objects.select_for_update().filter(exchange=exchange, user=user).first()
    if rating is None:
        return False
    rating.delete()
    return True


@transaction.atomic
def pairwise_vote_record(*, user, left_id, right_id, outcome: str) -> tuple[PairwiseVote, bool]:
    """Record which of two replies is better; voting again on the same pair changes the vote."""
    if not user.is_authenticated or not user.has_perm("agents_app.add_pairwisevote"):
        raise access.AccessDenied("log in with a player account to compare replies")
    if outcome not in PairwiseVote.Outcome.values:
        raise ServiceError(f"outcome: must be one of {', '.join(PairwiseVote.Outcome.values)}, not {outcome!r}")
    left = access.access_exchange(left_id, user)
    right = access.access_exchange(right_id, user)
    if left.pk == right.pk:
        raise ServiceError("right: must be a different reply from left")
    if left.persona_id != right.persona_id:
        raise ServiceError("right: both replies must come from the same persona")
    # Store each pair once, in a canonical order, so left/right swaps are the same pair.
    if str(left.pk) > str(right.pk):
        left, right = right, left
        outcome = {"left": "right", "right": "left"}.get(outcome, outcome)
    try:
        with transaction.atomic():
            return PairwiseVote.objects.update_or_create(
                voter=user, left=left, right=right, defaults={"outcome": outcome}
            )
    except IntegrityError:
        vote = PairwiseVote.objects.get(voter=user, left=left, right=right)
        vote.outcome = outcome
        vote.save(update_fields=["outcome"])
        return vote, False


# --- playground -----------------------------------------------------------------------------------


def playground_prepare(*, user, persona_slug: str, version: int | None = None) -> gateway.AskPlan:
    """The same plan the game gets, for a playground NPC (no game server) of this user and persona.

    A person may talk to the personas they may see (``agents_app.visibility.visible_to_user``:
    public ones, their own, every one for a moderator); a share with a game server gives its owner
    nothing here. Any other persona is answered as one that does not exist. ``version`` picks any
    approved or active adapter version, or a validated one not yet approved that only its owner and the
    moderators can see (``access.visible_adapter_versions``): a test, whose exchange stays out of the
    public feed and out of training. None means the persona's active version.
    """
    if not user.is_authenticated:
        raise access.AccessDenied("log in to use the playground")
    persona = access.access_persona(persona_slug, user)
    adapter = None
    if version is not None:
        adapter = access.access_adapter_version(persona.slug, version, user)
        if adapter.status not in PLAYGROUND_STATUSES:
            raise ServiceError(
                f"version: v{version} is {adapter.status}; only validated, approved or active versions can talk"
            )
    plan = gateway.ask_prepare(
        server=None, user=user, npc_world_id=f"playground:{user.pk}:{persona.slug}", persona_slug=persona.slug
    )
    if adapter is not None:
        plan.adapter_version_id = adapter.pk
        plan.request["adapter"] = gateway.adapter_ref(adapter)
        plan.is_test = adapter.status == AdapterVersion.Status.VALIDATED
    return plan


def playground_record(*, user, plan, text: str, result: dict, ttft_ms, total_ms) -> tuple[Exchange, object]:
    return gateway.exchange_record(
        plan=plan,
        player=playground_player_name(user),
        text=text,
        context={"playground": True},
        result=result,
        ttft_ms=ttft_ms,
        total_ms=total_ms,
        source=Exchange.Source.PLAYGROUND,
    )
