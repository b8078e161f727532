"""Services behind the game gateway: each runs in one transaction, called from the consumer."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Q
from django.utils import timezone

from agents_app import policy
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


class _RowReader:
    """One model's columns in a hand-joined SELECT, read back into an instance as the ORM would."""

    def __init__(self, model, alias: str, connection) -> None:
        from django.db.models.expressions import Col

        self.model, self.fields = model, model._meta.concrete_fields
        self.names = [f.attname for f in self.fields]
        quote = connection.ops.quote_name
        self.columns = ", ".join(f"{alias}.{quote(f.column)}" for f in self.fields)
        self.cols = [Col(alias, f) for f in self.fields]
        # The converters the ORM's compiler applies to each column (JSON text, SQLite's dates...).
        self.converters = [connection.ops.get_db_converters(c) + c.get_db_converters(connection) for c in self.cols]

    def read(self, values, connection):
        if values[0] is None:  # the LEFT JOIN found nothing
            return None
        out = []
        for value, converters, col in zip(values, self.converters, self.cols, strict=True):
            for convert in converters:
                value = convert(value, col, connection)
            out.append(value)
        return self.model.from_db(connection.alias, self.names, out)


_npc_sql: dict[tuple[str, bool], tuple[str, list[_RowReader]]] = {}


def npc_select(connection, server: GameServer | None, npc_world_id: str) -> tuple[str, list, list[_RowReader]]:
    """The SELECT of an NPC with its persona and the persona's active adapter, built once per
    database vendor: ``(sql, params, readers)``; ``npc_from_row`` reads its row."""
    key = (connection.vendor, server is None)
    built = _npc_sql.get(key)
    if built is None:
        quote = connection.ops.quote_name
        readers = [
            _RowReader(Npc, "n", connection),
            _RowReader(Persona, "p", connection),
            _RowReader(AdapterVersion, "a", connection),
        ]
        table = {m: quote(m._meta.db_table) for m in (Npc, Persona, AdapterVersion)}
        where = "n.game_server_id IS NULL" if server is None else "n.game_server_id = %s"
        # Identifiers from the models' own metadata, quoted; the values are parameters.
        sql = (
            f"SELECT {', '.join(r.columns for r in readers)} FROM {table[Npc]} n "  # noqa: S608
            f"JOIN {table[Persona]} p ON p.id = n.persona_id "
            f"LEFT JOIN {table[AdapterVersion]} a ON a.id = p.active_adapter_id "
            f"WHERE {where} AND n.world_id = %s"
        )
        built = _npc_sql[key] = (sql, readers)
    sql, readers = built
    params = [npc_world_id] if server is None else [server.pk, npc_world_id]
    return sql, params, readers


def npc_from_row(row, readers: list[_RowReader], connection) -> Npc | None:
    if row is None:
        return None
    npc_reader, persona_reader, adapter_reader = readers
    n, p = len(npc_reader.fields), len(persona_reader.fields)
    npc = npc_reader.read(row[:n], connection)
    persona = persona_reader.read(row[n : n + p], connection)
    persona.active_adapter = adapter_reader.read(row[n + p :], connection)
    npc.persona = persona
    return npc


def _npc_with_persona(server: GameServer | None, npc_world_id: str) -> Npc | None:
    """The NPC with its persona and the persona's active adapter: one SELECT, built once.

    The same rows ``Npc.objects.select_related("persona__active_adapter").filter(...).first()``
    reads, without composing and compiling that query on every ask (the ORM's compiler was a
    third of the gateway's CPU per ask).
    """
    from django.db import connection

    sql, params, readers = npc_select(connection, server, npc_world_id)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return npc_from_row(row, readers, connection)


_insert_sql: dict[tuple[str, type], tuple[str, list]] = {}


def plain_insert(obj: models.Model, connection) -> tuple[str, list] | None:
    """``obj.save(force_insert=True)`` as one prebuilt INSERT: ``(sql, params)``, or None when the
    model has signal receivers (then only the ORM's own save will do).

    For a model with no save() of its own and no database-made values (a UUID key, defaults set
    in Python). Each value goes through the field's ``get_db_prep_save``, as the ORM's insert
    compiler does; composing and compiling that statement on every reply was most of its cost.
    """
    from django.db.models.signals import post_save, pre_save

    model = type(obj)
    if pre_save.has_listeners(model) or post_save.has_listeners(model):
        return None
    built = _insert_sql.get((connection.vendor, model))
    if built is None:
        quote = connection.ops.quote_name
        fields = list(model._meta.concrete_fields)
        sql = (
            f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "  # noqa: S608
            f"VALUES ({', '.join(['%s'] * len(fields))})"
        )
        built = _insert_sql[(connection.vendor, model)] = (sql, fields)
    sql, fields = built
    return sql, [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]


def _insert(obj: models.Model) -> None:
    """``obj.save(force_insert=True)``, through ``plain_insert`` where it can."""
    from django.db import connection

    statement = plain_insert(obj, connection)
    if statement is None:
        obj.save(force_insert=True)  # someone listens: the ORM's own way, signals and all
        return
    with connection.cursor() as cursor:
        cursor.execute(*statement)
    obj._state.adding, obj._state.db = False, connection.alias


def ask_prepare(
    *,
    server: GameServer | None,
    npc_world_id: str,
    persona_slug: str,
    display_name: str = "",
    with_memory: bool = True,
) -> AskPlan:
    """Reads only, on the hot path of every ask: no transaction, no row lock, no commit to wait for.

    An NPC that exists and keeps its persona is one query (the NPC with its persona and active
    adapter). ``with_memory=False`` leaves ``request["memory"]`` empty for a caller that keeps
    the NPC's recent turns itself (``NpcMemory``).
    """
    npc = _npc_with_persona(server, npc_world_id)
    if npc is not None and npc.persona.slug == persona_slug:
        return plan_for(npc, server=server, with_memory=with_memory)
    persona = Persona.objects.select_related("active_adapter").filter(slug=persona_slug).first()
    if persona is None:
        raise ServiceError(f"persona: no persona named {persona_slug!r}", code="unknown_persona")
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
    adapter = persona.active_adapter if persona.active_adapter_id else None
    if adapter is not None and adapter.status != AdapterVersion.Status.ACTIVE:
        adapter = None
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


@dataclass
class ExchangeDraft:
    """An exchange ready to write, with the policy's verdict and what writing it must also do."""

    exchange: Exchange
    verdict: policy.Verdict
    npc: Npc
    now: Any  # a datetime: when it was drafted
    freeze_until: Any = None  # a datetime: freeze the NPC until then
    mark: bool = False  # refresh the NPC's last_active_at

    @property
    def plain(self) -> bool:
        """One INSERT and nothing else: no flags, no freeze, no activity mark."""
        return not self.verdict.hits and not self.mark


def exchange_draft(
    *,
    plan: AskPlan,
    player: str,
    text: str,
    context: dict,
    result: dict[str, Any],
    ttft_ms: float | None,
    total_ms: float,
    source: str = Exchange.Source.GAME,
    rules: policy.RuleSet | None = None,
) -> ExchangeDraft:
    """The reply through the policy, as the exchange to store: no writes.

    Reads nothing when ``offline_draft_possible`` says so and ``rules`` are given.
    """
    persona = plan.persona or Persona.objects.get(pk=plan.persona_id)
    npc = plan.npc or Npc.objects.select_related("game_server").get(pk=plan.npc_id)
    verdict = policy.check_reply(
        persona, result.get("text", ""), result.get("actions", []), npc, context=context, rules=rules
    )
    adapter_id = result.get("adapter_id") or plan.adapter_version_id
    if adapter_id != plan.adapter_version_id and not AdapterVersion.objects.filter(pk=adapter_id).exists():
        adapter_id = None
    exchange = Exchange(
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
        base_model_id=result.get("base_model_id", "")[:200],
        finish_reason=result.get("finish_reason", "")[:16],
        worker_id=(result.get("worker_id") or "")[:100],
        prompt_tokens=result.get("prompt_tokens", 0),
        completion_tokens=result.get("completion_tokens", 0),
        ttft_ms=ttft_ms,
        total_ms=total_ms,
        excluded_from_training=verdict.severe,
    )
    now = timezone.now()
    freeze_until = None
    if verdict.freeze_seconds > 0 and source == Exchange.Source.GAME:
        # Playground and simulated NPCs answer to no mod: only a game NPC is frozen.
        freeze_until = now + timezone.timedelta(seconds=verdict.freeze_seconds)
    mark = npc.last_active_at is None or (now - npc.last_active_at).total_seconds() > ACTIVE_MARK_SECONDS
    return ExchangeDraft(exchange=exchange, verdict=verdict, npc=npc, now=now, freeze_until=freeze_until, mark=mark)


def offline_draft_possible(plan: AskPlan, result: dict[str, Any]) -> policy.RuleSet | None:
    """The rules to draft this exchange with without a query, or None when drafting it reads the
    database (rules not cached, actions to check against the NPC's history and the protected
    areas, an answer from another adapter version than the plan's)."""
    if plan.persona is None or plan.npc is None or result.get("actions"):
        return None
    adapter_id = result.get("adapter_id") or plan.adapter_version_id
    if adapter_id != plan.adapter_version_id:
        return None
    return policy.RuleSet.cached(plan.persona)


def exchange_write(draft: ExchangeDraft) -> tuple[Exchange, policy.Verdict]:
    """Store a drafted exchange: a plain one is one INSERT (atomic on its own); flags, a freeze
    or a stale activity mark add their writes in one transaction with it."""
    exchange, verdict, npc = draft.exchange, draft.verdict, draft.npc
    if draft.plain:
        _insert(exchange)
        return exchange, verdict
    npc_id = exchange.npc_id
    with transaction.atomic():
        exchange.save(force_insert=True)
        PolicyFlag.objects.bulk_create(
            PolicyFlag(exchange=exchange, rule=h.rule, severity=h.severity, action=h.action, detail=h.detail[:2000])
            for h in verdict.hits
        )
        if draft.mark:
            Npc.objects.filter(pk=npc_id).update(last_active_at=draft.now)
            npc.last_active_at = draft.now
        if draft.freeze_until is not None:
            # Never shorten a longer freeze (a moderator's, say) that happened since the plan was read.
            Npc.objects.filter(pk=npc_id).filter(
                Q(frozen_until__isnull=True) | Q(frozen_until__lt=draft.freeze_until)
            ).update(frozen_until=draft.freeze_until)
            current = Npc.objects.filter(pk=npc_id).values_list("frozen_until", flat=True).first()
            npc.frozen_until = current
            verdict = replace(verdict, frozen_until=current)
        transaction.on_commit(lambda: _count_hits(verdict))
    return exchange, verdict


def exchange_write_again(draft: ExchangeDraft) -> tuple[Exchange, policy.Verdict]:
    """``exchange_write`` after an attempt whose outcome is unknown (its connection failed): a row
    that did land is kept, not written twice."""

    def landed() -> bool:
        if Exchange.objects.filter(pk=draft.exchange.pk).exists():
            draft.exchange._state.adding, draft.exchange._state.db = False, "default"
            return True
        return False

    if landed():
        return draft.exchange, draft.verdict
    try:
        with transaction.atomic():
            return exchange_write(draft)
    except IntegrityError:
        # The first attempt was still under way on the server and landed meanwhile.
        if landed():
            return draft.exchange, draft.verdict
        raise


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
    """Run the reply through the policy and store the exchange, flags included.

    The stored ``reply_text`` is the text players see (redacted where a text rule hit);
    ``raw_text`` keeps what the model wrote, for moderators. A severe hit on a game NPC
    freezes it (``Npc.frozen_until``) and keeps the exchange out of training.
    """
    draft = exchange_draft(
        plan=plan,
        player=player,
        text=text,
        context=context,
        result=result,
        ttft_ms=ttft_ms,
        total_ms=total_ms,
        source=source,
    )
    return exchange_write(draft)


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
