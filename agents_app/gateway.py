"""Services behind the game gateway: each runs in one transaction, called from the consumer."""

from __future__ import annotations

import contextlib
import hashlib
import random
from dataclasses import dataclass, field, replace
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agents_app import policy, visibility
from agents_app.models import AdapterVersion, Exchange, GameServer, Npc, Persona, PlayerLink, PolicyFlag, Rating
from agents_app.services import ServiceError, rating_upsert


@dataclass
class AskPlan:
    """Everything the consumer needs to send an ask to a worker and record its answer.

    ``persona`` and ``npc`` are the rows ``ask_prepare`` read, handed on so that
    ``exchange_record`` need not read them again; a plan built elsewhere may leave them out.
    """

    npc_id: int
    persona_id: int
    adapter_version_id: int | None
    request: dict[str, Any] = field(default_factory=dict)
    persona: Persona | None = None
    npc: Npc | None = None
    is_test: bool = False  # a try of a version not yet approved: its exchange is kept out of the feed and training


def adapter_ref(adapter: AdapterVersion | None) -> dict[str, Any] | None:
    if adapter is None:
        return None
    return {"id": adapter.pk, "version": adapter.version, "path": str(adapter.absolute_path), "sha256": adapter.sha256}


def persona_payload(persona: Persona) -> dict[str, Any]:
    return {
        "slug": persona.slug,
        "name": persona.name,
        "system_prompt": persona.system_prompt,
        "traits": list(persona.traits or []),
        "allowed_actions": list(persona.allowed_actions or []),
        "temperature": persona.temperature,
        "top_p": persona.top_p,
        "max_tokens": persona.max_tokens,
        "repetition_penalty": persona.repetition_penalty,
    }


def npc_memory(npc: Npc, limit: int) -> list[dict[str, str]]:
    """The NPC's last ``limit`` exchanges, oldest first, as the prompt builder wants them."""
    if limit <= 0:
        return []
    recent = list(
        Exchange.objects.filter(npc=npc)
        .order_by("-created_at")
        .values("player_name", "player_text", "reply_text")[:limit]
    )
    return [{"player": e["player_name"], "text": e["player_text"], "reply": e["reply_text"]} for e in reversed(recent)]


def _npc_with_persona(server: GameServer | None, npc_world_id: str, *, user=None) -> Npc | None:
    """The NPC with its persona and the persona's active adapter, in one query; None when there is no
    such NPC, or its persona is not one the asker (``server``, or ``user`` for no server) may use."""
    may_use = visibility.usable_by(server=server, user=user, via="persona__")
    return (
        Npc.objects.select_related("persona__active_adapter", "persona__canary_adapter")
        .filter(may_use, game_server=server, world_id=npc_world_id)
        .first()
    )


def server_personas(server: GameServer) -> list[str]:
    """The slugs of the personas ``server`` may use, as its ``welcome`` lists them."""
    return list(
        Persona.objects.filter(visibility.usable_by_server(server)).order_by("slug").values_list("slug", flat=True)
    )


def unknown_persona(slug: str) -> ServiceError:
    """The answer to a persona that does not exist, and to one the asker may not use: the same
    words, so that nobody learns a private persona exists by asking for it."""
    return ServiceError(f"persona: no persona named {slug!r}", code="unknown_persona")


def ask_prepare(
    *,
    server: GameServer | None,
    npc_world_id: str,
    persona_slug: str,
    user=None,
    display_name: str = "",
    with_memory: bool = True,
) -> AskPlan:
    """Reads only, on the hot path of every ask: no transaction, no row lock, no commit to wait for.

    The persona must be one the asker may use (``agents_app.visibility``): ``server``'s for a game
    NPC, or ``user``'s for an NPC of no server (the playground's, a simulation's). Any other, an
    NPC's own persona included once it is private and not shared, is answered as unknown.

    An NPC that exists and keeps its persona is one query (the NPC with its persona and active
    adapter, the rule in its WHERE). ``with_memory=False`` leaves ``request["memory"]`` empty for a
    caller that keeps the NPC's recent turns itself (``NpcMemory``).
    """
    npc = _npc_with_persona(server, npc_world_id, user=user)
    if npc is not None and npc.persona.slug == persona_slug:
        return plan_for(npc, server=server, with_memory=with_memory)
    persona = (
        Persona.objects.select_related("active_adapter", "canary_adapter")
        .filter(visibility.usable_by(server=server, user=user), slug=persona_slug)
        .first()
    )
    if persona is None:
        raise unknown_persona(persona_slug)
    if npc is None:
        # get_or_create survives two first asks racing on the unique (server, world_id) constraint.
        npc, _ = Npc.objects.get_or_create(
            game_server=server, world_id=npc_world_id, defaults={"persona": persona, "display_name": display_name}
        )
    if npc.persona_id != persona.pk:
        Npc.objects.filter(pk=npc.pk).update(persona=persona)
    npc.persona = persona
    return plan_for(npc, server=server, with_memory=with_memory)


def plan_for(npc: Npc, *, server: GameServer | None, with_memory: bool) -> AskPlan:
    """The plan of an ask to ``npc`` (read with its persona and active adapter), or the
    ServiceError that answers it (a frozen NPC)."""
    persona = npc.persona
    if server is not None:
        npc.game_server = server  # the policy's zone rules want it: no query to fetch it again
    if npc.is_frozen():
        raise ServiceError(f"npc: {npc.world_id!r} is frozen until {npc.frozen_until.isoformat()}", code="npc_frozen")
    adapter = answering_version(persona)
    return AskPlan(
        npc_id=npc.pk,
        persona_id=persona.pk,
        adapter_version_id=adapter.pk if adapter else None,
        request={
            "persona": persona_payload(persona),
            "adapter": adapter_ref(adapter),
            "memory": npc_memory(npc, settings.VOYAGER_MEMORY_TURNS) if with_memory else [],
        },
        persona=persona,
        npc=npc,
    )


def answering_version(persona: Persona, draw: float | None = None) -> AdapterVersion | None:
    """The version that answers this ask: the canary for its ``canary_percent`` of asks, else the
    active version (None: the base model). ``draw`` is a number in [0, 1), random by default."""
    canary = persona.canary_adapter if persona.canary_adapter_id else None
    on_trial = canary is not None and canary.status == AdapterVersion.Status.CANARY
    if on_trial and (random.random() if draw is None else draw) * 100 < persona.canary_percent:
        return canary
    active = persona.active_adapter if persona.active_adapter_id else None
    if active is not None and active.status != AdapterVersion.Status.ACTIVE:
        return None
    return active


class NpcMemory:
    """The last turns of each NPC one game-server connection talks to, kept in memory.

    An NPC belongs to one game server, and that server's connection records every exchange
    it has, so after the first ask (read from the database) the connection knows the NPC's
    recent turns without reading them again.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = settings.VOYAGER_MEMORY_TURNS if limit is None else limit
        self._turns: dict[str, list[dict[str, str]]] = {}

    def knows(self, npc_world_id: str) -> bool:
        return npc_world_id in self._turns

    def turns(self, plan: AskPlan, npc_world_id: str) -> list[dict[str, str]]:
        """The turns for the request: remembered, or the ones ``plan`` read from the database."""
        if npc_world_id not in self._turns:
            self._turns[npc_world_id] = list(plan.request.get("memory") or [])[-self.limit :] if self.limit else []
        return list(self._turns[npc_world_id])

    def remember(self, npc_world_id: str, *, player: str, text: str, reply: str) -> None:
        if self.limit <= 0:
            return
        turns = self._turns.setdefault(npc_world_id, [])
        turns.append({"player": player, "text": text, "reply": reply})
        del turns[: -self.limit]

    def forget(self, npc_world_id: str) -> None:
        self._turns.pop(npc_world_id, None)


# An NPC's last_active_at is a "seen lately" mark: refreshed when older than this, not on every reply.
ACTIVE_MARK_SECONDS = 60


def exchange_record(
    *,
    plan: AskPlan,
    player: str,
    text: str,
    context: dict,
    result: dict[str, Any],
    ttft_ms: float | None,
    total_ms: float,
    source: str = Exchange.Source.GAME,
) -> tuple[Exchange, policy.Verdict]:
    """Run the reply through the policy and store the exchange, flags included, in one transaction.

    The stored ``reply_text`` is the text players see (redacted where a text rule hit);
    ``raw_text`` keeps what the model wrote, for moderators. A severe hit on a game NPC
    freezes it (``Npc.frozen_until``) and keeps the exchange out of training.
    """
    persona = plan.persona or Persona.objects.get(pk=plan.persona_id)
    npc = plan.npc or Npc.objects.select_related("game_server").get(pk=plan.npc_id)
    verdict = policy.check_reply(persona, result.get("text", ""), result.get("actions", []), npc, context=context)
    adapter_id = result.get("adapter_id") or plan.adapter_version_id
    if adapter_id != plan.adapter_version_id and not AdapterVersion.objects.filter(pk=adapter_id).exists():
        adapter_id = None
    now = timezone.now()
    mark = npc.last_active_at is None or (now - npc.last_active_at).total_seconds() > ACTIVE_MARK_SECONDS
    freeze = verdict.freeze_seconds > 0 and source == Exchange.Source.GAME
    # A clean reply is one INSERT, atomic on its own; flags, a freeze or an activity mark go with it.
    with transaction.atomic() if verdict.hits or mark or freeze else contextlib.nullcontext():
        exchange = Exchange.objects.create(
            npc_id=plan.npc_id,
            persona=persona,
            source=source,
            player_name=player,
            player_text=text,
            context=context or {},
            prompt=result.get("prompt", ""),
            reply_text=verdict.text if verdict.text is not None else result.get("text", ""),
            raw_text=result.get("raw_text", "") or result.get("text", ""),
            actions=verdict.allowed,
            blocked_actions=verdict.blocked,
            adapter_version_id=adapter_id,
            is_test=plan.is_test,
            base_model_id=result.get("base_model_id", "")[:200],
            finish_reason=result.get("finish_reason", "")[:16],
            worker_id=(result.get("worker_id") or "")[:100],
            prompt_tokens=result.get("prompt_tokens", 0),
            completion_tokens=result.get("completion_tokens", 0),
            ttft_ms=ttft_ms,
            total_ms=total_ms,
            excluded_from_training=verdict.severe,
        )
        if verdict.hits:
            PolicyFlag.objects.bulk_create(
                PolicyFlag(exchange=exchange, rule=h.rule, severity=h.severity, action=h.action, detail=h.detail[:2000])
                for h in verdict.hits
            )
        if mark:
            Npc.objects.filter(pk=npc.pk).update(last_active_at=now)
            npc.last_active_at = now
        if freeze:
            # Playground and simulated NPCs answer to no mod: only a game NPC is frozen. Never
            # shorten a longer freeze (a moderator's, say) that happened since the plan was read.
            until = now + timezone.timedelta(seconds=verdict.freeze_seconds)
            Npc.objects.filter(pk=npc.pk).filter(Q(frozen_until__isnull=True) | Q(frozen_until__lt=until)).update(
                frozen_until=until
            )
            npc.frozen_until = Npc.objects.filter(pk=npc.pk).values_list("frozen_until", flat=True).first()
            verdict = replace(verdict, frozen_until=npc.frozen_until)
        if verdict.hits:
            transaction.on_commit(lambda: _count_hits(verdict))
    return exchange, verdict


def _count_hits(verdict: policy.Verdict) -> None:
    from agents_app import observability

    for hit in verdict.hits:
        observability.POLICY_HITS.labels(rule=hit.rule, severity=hit.severity).inc()


def rating_from_game(*, server: GameServer, exchange_id, player: str, score: int, reason: str = "") -> Rating:
    exchange = Exchange.objects.filter(pk=exchange_id, npc__game_server=server).first()
    if exchange is None:
        raise ServiceError(f"exchange: no exchange {exchange_id} on this server", code="not_found")
    link = PlayerLink.objects.filter(player_name=player, verified_at__isnull=False).select_related("user").first()
    rater = {"user": link.user} if link else {"player_name": player}
    rating, _ = rating_upsert(exchange=exchange, score=score, reason=reason or "", source=Rating.Source.GAME, **rater)
    return rating


def _code_hash(code: str) -> str:
    return hashlib.sha256(code.strip().upper().encode()).hexdigest()


@transaction.atomic
def player_link_start(*, user, player_name: str, ttl_minutes: int = 15) -> str:
    """Issue a one-time code the player types in game (`/voyager link CODE`)."""
    import secrets

    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I to misread
    code = "".join(secrets.choice(alphabet) for _ in range(8))
    PlayerLink.objects.update_or_create(
        user=user,
        player_name=player_name,
        defaults={
            "code_hash": _code_hash(code),
            "code_expires_at": timezone.now() + timezone.timedelta(minutes=ttl_minutes),
        },
    )
    return code


@transaction.atomic
def player_link_verify(*, player_name: str, code: str) -> PlayerLink:
    link = (
        PlayerLink.objects.select_for_update()
        .filter(player_name=player_name, code_hash=_code_hash(code), code_expires_at__gt=timezone.now())
        .first()
    )
    if link is None:
        raise ServiceError("code: unknown or expired for this player; get a new one on the portal", code="not_found")
    other = PlayerLink.objects.filter(player_name=player_name, verified_at__isnull=False).exclude(pk=link.pk)
    if other.exists():
        raise ServiceError(f"player: {player_name!r} is already linked to another account", code="invalid")
    link.verified_at = timezone.now()
    link.code_hash = ""
    link.code_expires_at = None
    link.save(update_fields=["verified_at", "code_hash", "code_expires_at"])
    return link


def server_group(server_id: int) -> str:
    """The channel-layer group of a game server's open gateway connections."""
    return f"gameserver.{server_id}"


def server_disconnect(server_id: int) -> None:
    """Close the server's open connections (its token changed or was revoked): they reconnect
    with the token they now hold, and an old token is refused at the handshake."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(server_group(server_id), {"type": "gateway.token_changed"})


def _token_before(sender, instance: GameServer, **_kwargs) -> None:
    """Signal receiver (pre_save): remember the token and the enabled flag the row had."""
    instance._token_before = (
        GameServer.objects.filter(pk=instance.pk).values_list("token_hash", "enabled").first() if instance.pk else None
    )


def _token_changed(sender, instance: GameServer, created=False, **_kwargs) -> None:
    """Signal receiver: a changed token or enabled flag, or a deleted server, ends its connections."""
    if created:
        return
    before = getattr(instance, "_token_before", None)
    if before is not None and before == (instance.token_hash, instance.enabled):
        return  # a rename, say: the connections stay
    server_id = instance.pk
    transaction.on_commit(lambda: server_disconnect(server_id))


def server_seen(server: GameServer) -> None:
    GameServer.objects.filter(pk=server.pk).update(last_seen_at=timezone.now())
