"""The event loop's own PostgreSQL connection: the gateway's per-ask read and write, as the ORM does them."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.utils import timezone

from agents_app import gateway, hotpath, policy
from agents_app.hotpath import LoopDatabase, loop_db
from agents_app.models import AdapterVersion, Exchange, Npc
from tests.agents_app.test_models import make_adapter
from tests.portal.test_settings import run_manage

pytestmark = pytest.mark.django_db(transaction=True)

if connection.vendor != "postgresql":
    pytest.skip("the loop's connection is PostgreSQL's", allow_module_level=True)


@pytest.fixture(params=["prepared", "unprepared"])
def mode(request, settings):
    settings.VOYAGER_GATEWAY_LOOP_DB = request.param
    return request.param


def fields_of(obj):
    return {f.attname: getattr(obj, f.attname) for f in type(obj)._meta.concrete_fields}


async def test_the_npc_read_is_the_database_threads_read(npc, persona, mode):
    def setup():
        adapter = make_adapter(persona, 4, status=AdapterVersion.Status.ACTIVE)
        persona.active_adapter, persona.traits = adapter, ["gruff", "kind"]
        persona.save()
        return gateway._npc_with_persona(npc.game_server, npc.world_id)

    thread = await database_sync_to_async(setup)()
    for _ in range(2):  # the second time from the prepared statement, where there is one
        loop = await hotpath.npc_with_persona(npc.game_server, npc.world_id)
        assert fields_of(loop) == fields_of(thread)
        assert fields_of(loop.persona) == fields_of(thread.persona) and loop.persona.traits == ["gruff", "kind"]
        assert fields_of(loop.persona.active_adapter) == fields_of(thread.persona.active_adapter)
    assert await hotpath.npc_with_persona(npc.game_server, "nobody") is None
    assert await hotpath.npc_with_persona(None, npc.world_id) is None  # not a playground NPC


async def test_a_plain_insert_stores_what_the_orm_stores(npc, persona, mode):
    def draft():
        Npc.objects.filter(pk=npc.pk).update(last_active_at=timezone.now())
        plan = gateway.ask_prepare(server=npc.game_server, npc_world_id=npc.world_id, persona_slug=persona.slug)
        result = {"text": "Well met — ünïcode 🙂", "raw_text": "Well met", "actions": [], "prompt": "P",
                  "base_model_id": "starter", "worker_id": "w1", "prompt_tokens": 7, "completion_tokens": 5,
                  "finish_reason": "stop"}  # fmt: skip
        rules = policy.RuleSet.for_persona(persona)
        return gateway.exchange_draft(
            plan=plan, player="alex", text="hi", context={"pos": [1, 2, 3]}, result=result, ttft_ms=1.5,
            total_ms=2.25, rules=rules,
        )  # fmt: skip

    first = await database_sync_to_async(draft)()
    assert first.plain and await hotpath.insert(first.exchange)
    assert not first.exchange._state.adding and first.exchange._state.db == "default"

    def twin_of(exchange):
        stored = Exchange.objects.get(pk=exchange.pk)
        twin = Exchange.objects.get(pk=exchange.pk)
        twin.pk, twin._state.adding = uuid.uuid4(), True
        twin.save(force_insert=True)  # the same values through the ORM's own insert
        return stored, Exchange.objects.get(pk=twin.pk)

    stored, twin = await database_sync_to_async(twin_of)(first.exchange)
    for name, value in fields_of(stored).items():
        if name != "id":
            assert value == getattr(first.exchange, name) == getattr(twin, name), name
    assert stored.context == {"pos": [1, 2, 3]} and stored.reply_text == "Well met — ünïcode 🙂"


async def test_a_failed_statement_leaves_the_next_one_a_new_connection(db):
    """A statement that fails (here: a prepared statement a schema change made stale) costs that
    statement only: the connection is dropped, and the next call opens another."""
    run = database_sync_to_async(lambda sql: connection.cursor().execute(sql))
    await run("CREATE TABLE loopdb_probe (v integer)")
    try:
        await run("INSERT INTO loopdb_probe VALUES (1)")
        assert await loop_db.fetchone("SELECT v FROM loopdb_probe", []) == (1,)
        first = loop_db._conns[asyncio.get_running_loop()]
        await run("ALTER TABLE loopdb_probe ALTER COLUMN v TYPE text")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="cached plan must not change result type"):
            await loop_db.fetchone("SELECT v FROM loopdb_probe", [])
        assert first.closed
        assert await loop_db.fetchone("SELECT v FROM loopdb_probe", []) == ("1",)
        assert loop_db._conns[asyncio.get_running_loop()] is not first
    finally:
        loop_db.close_all()
        await run("DROP TABLE loopdb_probe")


async def test_closing_all_ends_the_sessions(db):
    await loop_db.fetchone("SELECT 1", [])
    pid = loop_db._conns[asyncio.get_running_loop()].info.backend_pid
    loop_db.close_all()

    def alive():
        with connection.cursor() as cursor:
            for _ in range(50):
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
                if cursor.fetchone()[0] == 0:
                    return False
                cursor.execute("SELECT pg_sleep(0.05)")
            return True

    assert not loop_db._conns and not await database_sync_to_async(alive)()


def test_writing_again_after_an_unknown_outcome_keeps_one_row(npc, persona):
    plan = gateway.ask_prepare(server=npc.game_server, npc_world_id=npc.world_id, persona_slug=persona.slug)
    Npc.objects.filter(pk=npc.pk).update(last_active_at=timezone.now())
    plan.npc.last_active_at = timezone.now()
    result = {"text": "hi", "actions": []}

    def draft():
        return gateway.exchange_draft(
            plan=plan, player="p", text="t", context={}, result=result, ttft_ms=1.0, total_ms=2.0
        )

    landed = draft()
    gateway.exchange_write(landed)  # the first attempt did land
    exchange, _ = gateway.exchange_write_again(landed)
    assert exchange.pk == landed.exchange.pk and Exchange.objects.filter(pk=exchange.pk).count() == 1
    missing = draft()  # the first attempt did not land
    exchange, _ = gateway.exchange_write_again(missing)
    assert Exchange.objects.filter(pk=missing.exchange.pk).exists() and Exchange.objects.count() == 2


def test_writing_again_while_the_first_attempt_is_still_committing_keeps_one_row(npc, persona):
    """The first attempt's INSERT is still open on another connection when the second one is
    written: the second waits on the key, finds it taken, and answers with the row that landed."""
    import copy
    import threading

    plan = gateway.ask_prepare(server=npc.game_server, npc_world_id=npc.world_id, persona_slug=persona.slug)
    plan.npc.last_active_at = timezone.now()
    draft = gateway.exchange_draft(
        plan=plan, player="p", text="t", context={}, result={"text": "hi", "actions": []}, ttft_ms=1.0, total_ms=2.0
    )
    inserted, done = threading.Event(), threading.Event()

    def first_attempt():
        from django.db import connection as theirs
        from django.db import transaction

        try:
            with transaction.atomic():
                gateway._insert(copy.copy(draft.exchange))
                inserted.set()
                time.sleep(0.5)  # the second attempt runs meanwhile, and waits on the key
        finally:
            done.set()
            theirs.close()

    thread = threading.Thread(target=first_attempt)
    thread.start()
    assert inserted.wait(5)
    exchange, _ = gateway.exchange_write_again(draft)
    thread.join(5)
    assert done.is_set() and exchange.pk == draft.exchange.pk
    assert Exchange.objects.filter(pk=exchange.pk).count() == 1 and not exchange._state.adding


def test_a_bad_loop_database_setting_stops_the_process(tmp_path):
    result = run_manage("check", VOYAGER_VAR_DIR=str(tmp_path), VOYAGER_GATEWAY_LOOP_DB="yes")
    assert result.returncode != 0
    assert "VOYAGER_GATEWAY_LOOP_DB='yes' must be 'prepared', 'unprepared' or 'off'" in result.stderr


async def test_a_statement_that_hangs_is_given_up_and_its_connection_replaced(db, monkeypatch):
    monkeypatch.setattr(loop_db, "timeout", 0.2)
    assert await loop_db.fetchone("SELECT 1", []) == (1,)
    first = loop_db._conns[asyncio.get_running_loop()]
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        await loop_db.fetchone("SELECT pg_sleep(3)", [])
    assert time.monotonic() - began < 2 and first.closed
    assert await loop_db.fetchone("SELECT 2", []) == (2,)
    assert loop_db._conns[asyncio.get_running_loop()] is not first


async def test_a_connection_that_cannot_be_opened_in_time_is_given_up(db, monkeypatch):
    async def unreachable():
        await asyncio.sleep(5)

    monkeypatch.setattr(loop_db, "timeout", 0.2)
    monkeypatch.setattr(LoopDatabase, "_open", staticmethod(unreachable))
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        await loop_db.fetchone("SELECT 1", [])
    assert time.monotonic() - began < 2 and asyncio.get_running_loop() not in loop_db._conns
