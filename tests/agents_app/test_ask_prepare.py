"""The gateway's reads and writes per ask: an NPC read is one query, a clean reply one INSERT."""

import uuid

import pytest
from django.db import connection
from django.db.models.signals import post_save
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents_app import gateway, policy, services
from agents_app.models import AdapterVersion, Exchange, Npc

pytestmark = pytest.mark.django_db


def test_the_npc_read_matches_the_orms_with_persona_and_active_adapter(npc, persona):
    adapter = AdapterVersion.objects.create(
        persona=persona,
        version=3,
        files_path="adapters/miner/3",
        sha256="d" * 64,
        base_model_id="starter",
        rank=8,
        target_modules=["q_proj", "v_proj"],
        metrics={"loss": 0.5},
        size_bytes=10,
        status="active",
    )
    persona.active_adapter = adapter
    persona.traits = ["gruff", "kind"]
    persona.save()
    with CaptureQueriesContext(connection) as queries:
        got = gateway._npc_with_persona(npc.game_server, npc.world_id)
    assert len(queries) == 1
    orm = Npc.objects.select_related("persona__active_adapter").get(pk=npc.pk)
    for field in Npc._meta.concrete_fields:
        assert getattr(got, field.attname) == getattr(orm, field.attname), field.name
    for field in type(persona)._meta.concrete_fields:
        assert getattr(got.persona, field.attname) == getattr(orm.persona, field.attname), field.name
    assert got.persona.traits == ["gruff", "kind"] and got.persona.active_adapter.target_modules == ["q_proj", "v_proj"]
    assert got.persona.active_adapter.metrics == {"loss": 0.5} and got.persona.active_adapter.pk == adapter.pk


def test_a_persona_without_an_active_adapter_reads_none(npc):
    assert gateway._npc_with_persona(npc.game_server, npc.world_id).persona.active_adapter is None


def test_an_unknown_npc_or_another_servers_npc_is_not_found(npc, persona, alice):
    assert gateway._npc_with_persona(npc.game_server, "nobody") is None
    assert gateway._npc_with_persona(None, npc.world_id, user=alice) is None  # a playground NPC of that name: none
    playground = Npc.objects.create(game_server=None, world_id="playground:1:miner", persona=persona)
    assert gateway._npc_with_persona(None, "playground:1:miner", user=alice).pk == playground.pk


def test_an_npc_whose_persona_the_asker_may_not_use_is_not_found(bob_server, private_persona, charlie):
    Npc.objects.create(game_server=bob_server, world_id="npc-b", persona=private_persona)
    Npc.objects.create(game_server=None, world_id="playground:9:secret", persona=private_persona)
    assert gateway._npc_with_persona(bob_server, "npc-b") is None
    assert gateway._npc_with_persona(None, "playground:9:secret", user=charlie) is None


def test_an_ask_names_the_server_or_the_person_who_asks(persona):
    with pytest.raises(TypeError):
        gateway.ask_prepare(server=None, npc_world_id="sim-1", persona_slug=persona.slug)


def test_an_ask_for_a_known_npc_is_one_query(npc, persona):
    gateway.ask_prepare(server=npc.game_server, npc_world_id=npc.world_id, persona_slug=persona.slug)
    with CaptureQueriesContext(connection) as queries:
        plan = gateway.ask_prepare(
            server=npc.game_server, npc_world_id=npc.world_id, persona_slug=persona.slug, with_memory=False
        )
    assert len(queries) == 1 and plan.npc_id == npc.pk and plan.request["persona"]["slug"] == persona.slug


def test_an_ask_for_a_shared_private_persona_is_one_query(bob_server, private_persona):
    services.persona_share_add(persona=private_persona, server_id=bob_server.pk)
    gateway.ask_prepare(server=bob_server, npc_world_id="npc-b", persona_slug="secret")
    with CaptureQueriesContext(connection) as queries:
        plan = gateway.ask_prepare(server=bob_server, npc_world_id="npc-b", persona_slug="secret", with_memory=False)
    assert len(queries) == 1 and plan.request["persona"]["slug"] == "secret"


def test_a_refused_ask_writes_nothing(bob_server, private_persona):
    Npc.objects.create(game_server=bob_server, world_id="npc-b", persona=private_persona)
    with CaptureQueriesContext(connection) as queries, pytest.raises(services.ServiceError) as refused:
        gateway.ask_prepare(server=bob_server, npc_world_id="npc-b", persona_slug="secret")
    assert refused.value.code == "unknown_persona" and str(refused.value) == "persona: no persona named 'secret'"
    assert len(queries) == 2 and all(q["sql"].startswith("SELECT") for q in queries)


def _record(plan, text="Well met, Alex — ünïcode 🙂"):
    result = {
        "text": text,
        "raw_text": text + " [[ACTION:jump]]",
        "actions": [],
        "prompt": "PROMPT",
        "base_model_id": "starter",
        "worker_id": "w1",
        "prompt_tokens": 7,
        "completion_tokens": 5,
        "finish_reason": "stop",
        "adapter_id": plan.adapter_version_id,
    }
    return gateway.exchange_record(
        plan=plan,
        player="alex",
        text="hi",
        context={"pos": [1, 2, 3], "biome": "taiga"},
        result=result,
        ttft_ms=1.5,
        total_ms=2.25,
    )


def test_a_clean_reply_is_one_insert_that_stores_what_the_orm_would(npc, persona):
    adapter = AdapterVersion.objects.create(
        persona=persona,
        version=2,
        files_path="adapters/miner/2",
        sha256="e" * 64,
        base_model_id="starter",
        rank=8,
        target_modules=["q_proj"],
        size_bytes=10,
        status="active",
    )
    persona.active_adapter = adapter
    persona.save()
    Npc.objects.filter(pk=npc.pk).update(last_active_at=timezone.now())  # fresh: no activity mark to write
    plan = gateway.ask_prepare(server=npc.game_server, npc_world_id=npc.world_id, persona_slug=persona.slug)
    policy.RuleSet.for_persona(persona)  # the rules are cached between replies
    with CaptureQueriesContext(connection) as queries:
        exchange, verdict = _record(plan)
    assert len(queries) == 1 and queries[0]["sql"].startswith("INSERT") and not verdict.hits
    stored = Exchange.objects.get(pk=exchange.pk)
    twin = Exchange.objects.get(pk=exchange.pk)
    twin.pk, twin._state.adding = uuid.uuid4(), True
    twin.save(force_insert=True)  # the same values through the ORM's own insert
    twin = Exchange.objects.get(pk=twin.pk)
    for field in Exchange._meta.concrete_fields:
        if field.name != "id":
            assert getattr(stored, field.attname) == getattr(exchange, field.attname), field.name
            assert getattr(stored, field.attname) == getattr(twin, field.attname), field.name
    assert stored.context == {"pos": [1, 2, 3], "biome": "taiga"} and stored.adapter_version_id == adapter.pk
    assert not exchange._state.adding and exchange._state.db == "default"


def test_with_someone_listening_to_the_exchanges_saves_the_orm_stores_it(npc, persona):
    heard = []

    def listener(sender, instance, created, **kwargs):
        heard.append((instance.pk, created))

    post_save.connect(listener, sender=Exchange, dispatch_uid="test-exchange-listener")
    try:
        plan = gateway.ask_prepare(server=npc.game_server, npc_world_id=npc.world_id, persona_slug=persona.slug)
        exchange, _ = _record(plan)
    finally:
        post_save.disconnect(sender=Exchange, dispatch_uid="test-exchange-listener")
    assert heard == [(exchange.pk, True)] and Exchange.objects.filter(pk=exchange.pk).exists()
