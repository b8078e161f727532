"""The gateway's one-query NPC read returns what the ORM returns."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from agents_app import gateway
from agents_app.models import AdapterVersion, Npc

pytestmark = pytest.mark.django_db


def test_the_npc_read_matches_the_orms_with_persona_and_active_adapter(npc, persona):
    adapter = AdapterVersion.objects.create(
        persona=persona, version=3, files_path="adapters/miner/3", sha256="d" * 64, base_model_id="starter",
        rank=8, target_modules=["q_proj", "v_proj"], metrics={"loss": 0.5}, size_bytes=10, status="active",
    )  # fmt: skip
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


def test_an_unknown_npc_or_another_servers_npc_is_not_found(npc, persona):
    assert gateway._npc_with_persona(npc.game_server, "nobody") is None
    assert gateway._npc_with_persona(None, npc.world_id) is None  # a playground NPC of that name: none
    playground = Npc.objects.create(game_server=None, world_id="playground:1:miner", persona=persona)
    assert gateway._npc_with_persona(None, "playground:1:miner").pk == playground.pk


def test_an_ask_for_a_known_npc_is_one_query(npc, persona):
    gateway.ask_prepare(server=npc.game_server, npc_world_id=npc.world_id, persona_slug=persona.slug)
    with CaptureQueriesContext(connection) as queries:
        plan = gateway.ask_prepare(
            server=npc.game_server, npc_world_id=npc.world_id, persona_slug=persona.slug, with_memory=False
        )
    assert len(queries) == 1 and plan.npc_id == npc.pk and plan.request["persona"]["slug"] == persona.slug
