"""The game gateway, protocol version 1, over the real channel layer (Redis in CI)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings
from django.utils import timezone

from agents_app import gateway, services
from agents_app.models import AdapterVersion, Exchange, Npc, Persona, PlayerLink, PolicyFlag, Rating
from agents_app.protocol import MAX_FRAME_BYTES
from inference.backends import EchoBackend
from inference.heartbeat import heartbeats
from tests.factories import make_adapter
from tests.gateway_client import ScriptedBackend, ask, collect_until, connect, recv, running_worker, send
from tests.processes import worker_process

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


no_embedded = override_settings(VOYAGER_EMBEDDED_WORKER=False)


@pytest.fixture(autouse=True)
def _embedded_off():
    with no_embedded:
        yield


# --- handshake ----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "vgs_wrong", "not-even-a-token"])
async def test_a_bad_or_missing_token_is_refused_with_4401(game_server, token):
    communicator, connected, code = await connect(token)
    assert (connected, code) == (False, 4401)


async def test_a_disabled_server_is_refused(game_server):
    await database_sync_to_async(type(game_server).objects.filter(pk=game_server.pk).update)(enabled=False)
    _, connected, code = await connect(game_server.raw_token)
    assert (connected, code) == (False, 4401)


async def test_hello_is_welcomed_with_the_personas(game_server, persona):
    communicator, connected, _ = await connect(game_server.raw_token)
    assert connected
    await send(communicator, {"type": "hello", "protocol": 1, "server": "alice", "mod_version": "0.1"})
    assert await recv(communicator) == {"type": "welcome", "protocol": 1, "personas": ["miner"]}
    await send(communicator, {"type": "hello", "protocol": 2})
    error = await recv(communicator)
    assert error["code"] == "invalid" and "protocol" in error["message"]
    await send(communicator, {"type": "ping"})
    assert await recv(communicator) == {"type": "pong"}
    await communicator.disconnect()


# --- bad frames ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, message",
    [
        ("{not json", "frame is not valid JSON"),
        ("[1, 2]", "frame must be a JSON object"),
        ('{"type": "dance"}', "type: 'dance' is not a known frame type"),
        (
            json.dumps({"type": "ask", "id": "x1", "npc": "n", "persona": "miner", "player": "p"}),
            "text: Field required",
        ),
        (json.dumps(ask(text="")), "text: String should have at least 1 character"),
        (json.dumps(ask(max_tokens=10_000)), "max_tokens: Input should be less than or equal to 256"),
        (json.dumps(ask(context={"pos": [1, 2]})), "context.pos"),
        (
            json.dumps({"type": "rate", "exchange": "nope", "player": "p", "score": 1}),
            "exchange: Input should be a valid UUID",
        ),
        (
            json.dumps({"type": "rate", "exchange": "8c3c9f5e-7c4a-4d1e-9f57-2f9a8d9e0a11", "player": "p", "score": 5}),
            "score",
        ),
    ],
)
async def test_a_bad_frame_gets_an_error_naming_the_problem_and_the_connection_stays(game_server, raw, message):
    communicator, _, _ = await connect(game_server.raw_token)
    await communicator.send_to(text_data=raw)
    error = await recv(communicator)
    assert error["type"] == "error" and error["code"] == "invalid"
    assert message in error["message"]
    await send(communicator, {"type": "ping"})
    assert (await recv(communicator))["type"] == "pong"
    await communicator.disconnect()


async def test_an_invalid_ask_echoes_its_id(game_server):
    communicator, _, _ = await connect(game_server.raw_token)
    await send(communicator, ask(id="q7", text=""))
    assert (await recv(communicator))["id"] == "q7"
    await communicator.disconnect()


async def test_an_oversize_frame_closes_with_4413(game_server):
    communicator, _, _ = await connect(game_server.raw_token)
    await send(communicator, ask(text="x" * MAX_FRAME_BYTES))
    assert await communicator.receive_output(timeout=5) == {"type": "websocket.close", "code": 4413}
    await communicator.disconnect()  # end the consumer inside the test, not at loop teardown


async def test_a_binary_frame_closes_with_4400(game_server):
    communicator, _, _ = await connect(game_server.raw_token)
    await communicator.send_to(bytes_data=b"\x00\x01")
    assert await communicator.receive_output(timeout=5) == {"type": "websocket.close", "code": 4400}
    await communicator.disconnect()  # end the consumer inside the test, not at loop teardown


@override_settings(VOYAGER_GATEWAY_RATE=1.0, VOYAGER_GATEWAY_BURST=5)
async def test_past_the_rate_frames_are_refused_and_a_flood_closes_with_4429(game_server):
    communicator, _, _ = await connect(game_server.raw_token)
    for _ in range(5):
        await send(communicator, {"type": "hello", "protocol": 2})
        assert (await recv(communicator))["code"] == "invalid"
    await send(communicator, {"type": "hello", "protocol": 2})
    assert (await recv(communicator))["code"] == "rate_limited"
    for _ in range(10):
        await send(communicator, {"type": "hello", "protocol": 2})
    outputs = []
    while True:
        out = await communicator.receive_output(timeout=5)
        outputs.append(out)
        if out["type"] == "websocket.close":
            break
    assert outputs[-1] == {"type": "websocket.close", "code": 4429}
    await communicator.disconnect()


# --- asks ---------------------------------------------------------------------------------------


async def test_an_ask_streams_deltas_then_a_stored_reply(game_server, persona):
    backend = ScriptedBackend(deltas=["Hel", "lo ", "steve!"], actions=[{"name": "jump", "args": []}], gap=0.05)
    async with running_worker(backend):
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask(context={"pos": [1, 2, 3], "time_of_day": 0.5, "nearby": ["default:stone"]}))
        frames = await collect_until(communicator)
        await communicator.disconnect()
    deltas = [f["text"] for f in frames if f["type"] == "delta"]
    reply = frames[-1]
    assert "".join(deltas) == "Hello steve!" == reply["text"]
    assert reply["id"] == "a1" and reply["actions"] == [{"name": "jump", "args": []}] and reply["blocked"] == []
    exchange = await database_sync_to_async(Exchange.objects.select_related("npc").get)(pk=reply["exchange"])
    assert exchange.reply_text == "Hello steve!" and exchange.player_text == "hello Mo"
    assert exchange.prompt == "PROMPT hello Mo" and exchange.npc.world_id == "npc-1"
    assert exchange.context == {"pos": [1.0, 2.0, 3.0], "time_of_day": 0.5, "nearby": ["default:stone"]}
    assert exchange.ttft_ms is not None and exchange.total_ms >= exchange.ttft_ms
    assert backend.requests[0]["persona"]["slug"] == "miner" and backend.requests[0]["player"] == "steve"


async def test_an_answer_ready_at_once_comes_as_one_reply_without_deltas(game_server, persona):
    async with running_worker(ScriptedBackend(deltas=["Hel", "lo ", "steve!"])):
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask())
        frames = await collect_until(communicator)
        await communicator.disconnect()
    assert [f["type"] for f in frames] == ["reply"] and frames[0]["text"] == "Hello steve!"
    exchange = await database_sync_to_async(Exchange.objects.get)(pk=frames[0]["exchange"])
    assert exchange.worker_id and exchange.ttft_ms == pytest.approx(exchange.total_ms, abs=1.0)


async def test_an_npcs_memory_carries_its_last_turns_into_the_next_ask(game_server, persona):
    backend = ScriptedBackend(deltas=["Aye."])
    async with running_worker(backend):
        communicator, _, _ = await connect(game_server.raw_token)
        for i in range(3):
            await send(communicator, ask(id=f"m{i}", text=f"question {i}"))
            await collect_until(communicator)
        await communicator.disconnect()
        # A new connection (the server reconnected) reads the same turns back from the database.
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask(id="m3", text="question 3"))
        await collect_until(communicator)
        await communicator.disconnect()
    memories = [[turn["text"] for turn in r["memory"]] for r in backend.requests]
    assert memories[0] == [] and memories[1] == ["question 0"] and memories[2] == ["question 0", "question 1"]
    assert memories[3] == ["question 0", "question 1", "question 2"]
    assert backend.requests[2]["memory"][-1] == {"player": "steve", "text": "question 1", "reply": "Aye."}


async def test_actions_off_the_personas_allowlist_are_blocked_and_flagged(game_server, persona):
    actions = [{"name": "say", "args": ["hi"]}, {"name": "dig", "args": ["0", "0", "0"]}]
    async with running_worker(ScriptedBackend(actions=actions)):
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask())
        reply = (await collect_until(communicator))[-1]
        await communicator.disconnect()
    assert reply["actions"] == [{"name": "say", "args": ["hi"]}]
    assert reply["blocked"] == [{"name": "dig", "args": ["0", "0", "0"], "rule": "action_not_allowed"}]
    flag = await database_sync_to_async(PolicyFlag.objects.get)()
    assert flag.rule == "action_not_allowed" and flag.action == {"name": "dig", "args": ["0", "0", "0"]}


def activate_adapter(persona, version):
    adapter = make_adapter(persona, version, status=AdapterVersion.Status.ACTIVE)
    persona.active_adapter = adapter
    persona.save()
    return adapter


async def test_the_active_adapter_and_the_npcs_memory_go_to_the_worker(game_server, persona, npc):
    def setup():
        adapter = activate_adapter(persona, 3)
        for i in range(6):
            Exchange.objects.create(
                npc=npc,
                persona=persona,
                player_name="alex",
                player_text=f"q{i}",
                prompt="p",
                reply_text=f"r{i}",
                created_at=timezone.now() - timezone.timedelta(minutes=10 - i),
            )
        return adapter

    adapter = await database_sync_to_async(setup)()
    backend = ScriptedBackend()
    async with running_worker(backend), override_settings_async(VOYAGER_MEMORY_TURNS=3):
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask())
        reply = (await collect_until(communicator))[-1]
        await communicator.disconnect()
    request = backend.requests[0]
    assert request["adapter"]["id"] == adapter.pk and request["adapter"]["version"] == 3
    assert [m["text"] for m in request["memory"]] == ["q3", "q4", "q5"]
    stored = await database_sync_to_async(Exchange.objects.get)(pk=reply["exchange"])
    assert stored.adapter_version_id == adapter.pk


class override_settings_async:
    def __init__(self, **kwargs):
        self.override = override_settings(**kwargs)

    async def __aenter__(self):
        self.override.enable()

    async def __aexit__(self, *exc):
        self.override.disable()


async def test_an_unknown_persona_is_answered_unknown_persona(game_server, persona):
    async with running_worker(ScriptedBackend()):
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask(persona="nobody"))
        error = await recv(communicator)
        await communicator.disconnect()
    assert error == {
        "type": "error",
        "code": "unknown_persona",
        "message": "persona: no persona named 'nobody'",
        "id": "a1",
    }


# --- which personas a server may use ---------------------------------------------------------------


@database_sync_to_async
def share(persona, server):
    return services.persona_share_add(persona=persona, server_id=server.pk)[0]


@database_sync_to_async
def make_private(persona, private=True):
    Persona.objects.filter(pk=persona.pk).update(is_public=not private)


async def welcomed(server) -> list[str]:
    communicator, _, _ = await connect(server.raw_token)
    await send(communicator, {"type": "hello", "protocol": 1})
    welcome = await recv(communicator)
    await communicator.disconnect()
    return welcome["personas"]


async def asked(server, **frame):
    """The frames that answer one ask, and what the worker was sent."""
    backend = ScriptedBackend()
    async with running_worker(backend):
        communicator, _, _ = await connect(server.raw_token)
        await send(communicator, ask(**frame))
        frames = await collect_until(communicator)
        await communicator.disconnect()
    return frames, backend.requests


def refused_as_unknown(frames, slug, id="a1"):
    return frames == [
        {"type": "error", "code": "unknown_persona", "message": f"persona: no persona named {slug!r}", "id": id}
    ]


async def test_welcome_leaves_out_private_personas_the_server_may_not_use(bob_server, persona, private_persona):
    assert await welcomed(bob_server) == ["miner"]


async def test_welcome_lists_the_owners_private_personas_to_the_owners_server(game_server, persona, private_persona):
    assert await welcomed(game_server) == ["miner", "secret"]


async def test_welcome_lists_a_private_persona_shared_with_the_server(bob_server, persona, private_persona):
    await share(private_persona, bob_server)
    assert await welcomed(bob_server) == ["miner", "secret"]


async def test_an_ask_for_a_private_persona_is_answered_exactly_as_for_one_that_does_not_exist(
    bob_server, private_persona
):
    frames, requests = await asked(bob_server, npc="npc-b", persona="secret")
    assert refused_as_unknown(frames, "secret") and requests == []
    nobody, _ = await asked(bob_server, npc="npc-b", persona="nobody")
    assert refused_as_unknown(nobody, "nobody")  # the same code and words: nothing says "secret" exists
    assert not await database_sync_to_async(Npc.objects.filter(game_server=bob_server).exists)()


async def test_the_owners_server_may_use_a_private_persona(game_server, private_persona):
    frames, requests = await asked(game_server, npc="npc-secret", persona="secret")
    assert frames[-1]["type"] == "reply"
    assert requests[0]["persona"]["system_prompt"] == "Alice's secret prompt."


async def test_a_server_the_persona_is_shared_with_may_use_it_until_the_share_stops(bob_server, private_persona):
    await share(private_persona, bob_server)
    frames, _ = await asked(bob_server, npc="npc-b", persona="secret")
    assert frames[-1]["type"] == "reply"
    await database_sync_to_async(services.persona_share_remove)(persona=private_persona, server_id=bob_server.pk)
    frames, requests = await asked(bob_server, id="a2", npc="npc-b", persona="secret")
    assert refused_as_unknown(frames, "secret", id="a2") and requests == []


async def test_an_npc_of_a_persona_made_private_since_is_refused(bob_server, persona):
    frames, _ = await asked(bob_server, npc="npc-b", persona="miner")
    assert frames[-1]["type"] == "reply"  # public: Bob's server may use Alice's persona
    await make_private(persona)
    frames, requests = await asked(bob_server, id="a2", npc="npc-b", persona="miner")
    assert refused_as_unknown(frames, "miner", id="a2") and requests == []
    exchanges = await database_sync_to_async(Exchange.objects.filter(npc__game_server=bob_server).count)()
    assert exchanges == 1


async def test_an_npc_refused_its_persona_may_be_asked_with_one_the_server_may_use(bob_server, persona, bob):
    await asked(bob_server, npc="npc-b", persona="miner")
    await make_private(persona)
    await database_sync_to_async(Persona.objects.create)(slug="bobs", name="Bob's own", owner=bob, is_public=False)
    frames, requests = await asked(bob_server, id="a2", npc="npc-b", persona="bobs")
    assert frames[-1]["type"] == "reply" and requests[0]["persona"]["slug"] == "bobs"
    npc = await database_sync_to_async(Npc.objects.select_related("persona").get)(game_server=bob_server)
    assert npc.persona.slug == "bobs"


async def test_a_frozen_npc_is_answered_npc_frozen(game_server, npc):
    await database_sync_to_async(Npc.objects.filter(pk=npc.pk).update)(
        frozen_until=timezone.now() + timezone.timedelta(minutes=5)
    )
    async with running_worker(ScriptedBackend()):
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask())
        error = await recv(communicator)
        await communicator.disconnect()
    assert error["code"] == "npc_frozen" and error["id"] == "a1"


async def test_an_npc_frozen_since_its_last_answer_says_nothing_more(game_server, npc):
    backend = ScriptedBackend()
    async with running_worker(backend):
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask(id="a1"))
        assert (await collect_until(communicator))[-1]["type"] == "reply"
        await database_sync_to_async(Npc.objects.filter(pk=npc.pk).update)(
            frozen_until=timezone.now() + timezone.timedelta(minutes=5)
        )
        await send(communicator, ask(id="a2"))
        frames = await collect_until(communicator)
        assert await communicator.receive_nothing(timeout=0.2)
        await communicator.disconnect()
    assert [f["type"] for f in frames] == ["error"]
    assert frames[0]["code"] == "npc_frozen" and frames[0]["id"] == "a2"
    assert len(backend.requests) == 1  # checked before it was sent: the worker never heard of it
    assert await database_sync_to_async(Exchange.objects.count)() == 1


async def test_an_adapter_activated_between_asks_answers_the_next_one(game_server, persona, npc):
    backend = ScriptedBackend(gap=0.05)
    async with running_worker(backend):
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask(id="a1"))
        assert (await collect_until(communicator))[-1]["type"] == "reply"

        adapter = await database_sync_to_async(activate_adapter)(persona, 2)
        await send(communicator, ask(id="a2", text="and now?"))
        frames = await collect_until(communicator)
        await asyncio.sleep(0.2)
        assert await communicator.receive_nothing(timeout=0.2)
        await communicator.disconnect()
    first, again = backend.requests
    assert first["adapter"] is None and again["adapter"]["id"] == adapter.pk
    assert again["memory"] == [{"player": "steve", "text": "hello Mo", "reply": "Hello there"}]
    assert [f["type"] for f in frames] == ["delta", "delta", "reply"]
    assert "".join(f["text"] for f in frames[:-1]) == frames[-1]["text"] == "Hello there"
    stored = await database_sync_to_async(Exchange.objects.get)(pk=frames[-1]["exchange"])
    assert stored.adapter_version_id == adapter.pk and stored.player_text == "and now?"


async def test_repeat_asks_are_checked_and_stored(game_server, persona, npc):
    async with running_worker(ScriptedBackend()) as worker:
        communicator, _, _ = await connect(game_server.raw_token)
        replies = []
        for i in range(3):
            await send(communicator, ask(id=f"a{i}", text=f"question {i}"))
            replies.append((await collect_until(communicator))[-1])
        await communicator.disconnect()
    assert [r["type"] for r in replies] == ["reply"] * 3

    def stored():
        return {
            str(e.pk): (e.player_text, e.reply_text, e.npc_id, e.worker_id, e.ttft_ms is not None, e.total_ms > 0)
            for e in Exchange.objects.all()
        }

    assert await database_sync_to_async(stored)() == {
        r["exchange"]: (f"question {i}", "Hello there", npc.pk, worker.worker_id, True, True)
        for i, r in enumerate(replies)
    }


async def test_a_lost_database_connection_costs_no_reply(game_server, persona, npc):
    async with running_worker(ScriptedBackend()):
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask(id="a1"))
        await send(communicator, ask(id="a2"))
        assert [(await collect_until(communicator))[-1]["type"] for _ in range(2)] == ["reply", "reply"]

        def backend_pid():  # the session the gateway's database thread is on
            from django.db import connection

            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                return cursor.fetchone()[0]

        def terminate(pid):  # the server ends that session, as a restart or a network fault would
            import psycopg
            from django.db import connection

            params = connection.get_connection_params()
            dsn = {k: params[k] for k in ("dbname", "user", "host", "port") if params.get(k)}
            with psycopg.connect(**dsn, autocommit=True) as killer:
                return killer.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]

        assert await asyncio.to_thread(terminate, await database_sync_to_async(backend_pid)())
        replies = []
        for i in range(3, 6):
            await send(communicator, ask(id=f"a{i}"))
            replies.append((await collect_until(communicator))[-1])
        await communicator.disconnect()
    assert [r["type"] for r in replies] == ["reply"] * 3
    count = await database_sync_to_async(Exchange.objects.filter(pk__in=[r["exchange"] for r in replies]).count)()
    assert count == 3 and await database_sync_to_async(Exchange.objects.count)() == 5


async def test_a_write_held_up_by_a_lock_is_stored_once_when_it_is_released(game_server, persona, npc):
    async with running_worker(ScriptedBackend()):
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask(id="a1"))
        assert (await collect_until(communicator))[-1]["type"] == "reply"
        locked, release = threading.Event(), threading.Event()

        def hold_the_table():
            from django.db import connection, transaction

            try:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute("LOCK TABLE agents_app_exchange IN EXCLUSIVE MODE")  # reads go on, writes wait
                    locked.set()
                    release.wait(5)
            finally:
                connection.close()

        holder = threading.Thread(target=hold_the_table)
        holder.start()
        assert await asyncio.to_thread(locked.wait, 5)
        await send(communicator, ask(id="a2", text="still there?"))
        await asyncio.sleep(0.6)  # the write waits on the lock
        release.set()
        frames = await collect_until(communicator, timeout=10)
        await asyncio.to_thread(holder.join, 5)
        await communicator.disconnect()
    assert frames[-1]["type"] == "reply", frames
    stored = await database_sync_to_async(lambda: list(Exchange.objects.values_list("pk", "player_text")))()
    assert sorted(text for _, text in stored) == ["hello Mo", "still there?"]
    assert str(dict((t, pk) for pk, t in stored)["still there?"]) == frames[-1]["exchange"]


async def test_with_no_worker_an_ask_is_answered_unavailable_at_once(game_server, persona):
    store = heartbeats()
    for worker_id in await store.alive():
        await store.forget(worker_id)
    communicator, _, _ = await connect(game_server.raw_token)
    started = time.monotonic()
    await send(communicator, ask())
    error = await recv(communicator)
    await communicator.disconnect()
    assert error["code"] == "unavailable" and time.monotonic() - started < 2


async def test_a_full_worker_queue_is_answered_overloaded(game_server, persona):
    async with running_worker(ScriptedBackend(mode="overloaded")):
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask())
        error = await recv(communicator)
        await communicator.disconnect()
    assert error["code"] == "overloaded" and "queue is full" in error["message"]


@override_settings(VOYAGER_ASK_TIMEOUT=0.6)
async def test_an_ask_past_its_deadline_is_answered_timeout_and_cancelled(game_server, persona):
    backend = ScriptedBackend(mode="silent")
    async with running_worker(backend):
        communicator, _, _ = await connect(game_server.raw_token)
        started = time.monotonic()
        await send(communicator, ask())
        error = await recv(communicator)
        await asyncio.sleep(0.3)
        await communicator.disconnect()
    assert error["code"] == "timeout" and time.monotonic() - started < 3
    assert backend.cancelled == [backend.requests[0]["request_id"]]


async def test_a_cancelled_ask_is_cancelled_on_the_worker(game_server, persona):
    backend = ScriptedBackend(mode="silent")
    async with running_worker(backend):
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask())
        for _ in range(50):
            if backend.requests:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)  # the accepted message reaches the gateway
        await send(communicator, {"type": "cancel", "id": "a1"})
        await send(communicator, {"type": "ping"})
        assert (await recv(communicator))["type"] == "pong"
        for _ in range(50):
            if backend.cancelled:
                break
            await asyncio.sleep(0.05)
        await communicator.disconnect()
    assert backend.cancelled == [backend.requests[0]["request_id"]]


async def test_an_id_already_in_flight_is_refused(game_server, persona):
    async with running_worker(ScriptedBackend(mode="silent")):
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask())
        await send(communicator, ask())
        error = await recv(communicator)
        await communicator.disconnect()
    assert error["code"] == "invalid" and "already in flight" in error["message"]


async def test_many_npcs_streaming_at_once_lose_no_delta(game_server, persona):
    words = " ".join(f"w{i}" for i in range(60))
    async with running_worker(EchoBackend(delay=0.001)):
        communicator, _, _ = await connect(game_server.raw_token)
        n = 20
        for i in range(n):
            await send(communicator, ask(id=f"q{i}", npc=f"npc-{i}", text=f"{words} end{i}"))
        streamed, replies = {}, {}
        while len(replies) < n:
            frame = await recv(communicator, timeout=20)
            assert frame["type"] in ("delta", "reply"), frame
            if frame["type"] == "delta":
                streamed[frame["id"]] = streamed.get(frame["id"], "") + frame["text"]
            else:
                replies[frame["id"]] = frame["text"]
        await communicator.disconnect()
    for i in range(n):
        assert replies[f"q{i}"] == f"{words} end{i}"
        assert streamed[f"q{i}"] == replies[f"q{i}"]
    assert await database_sync_to_async(Exchange.objects.count)() == n


# --- rate and link ------------------------------------------------------------------------------


async def _one_exchange(game_server):
    async with running_worker(ScriptedBackend()):
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask())
        reply = (await collect_until(communicator))[-1]
    return communicator, reply["exchange"]


async def test_a_player_rates_a_reply_in_game_and_may_change_it(game_server, persona):
    communicator, exchange_id = await _one_exchange(game_server)
    await send(communicator, {"type": "rate", "exchange": exchange_id, "player": "steve", "score": 1, "reason": "nice"})
    assert await recv(communicator) == {"type": "rated", "exchange": exchange_id}
    await send(communicator, {"type": "rate", "exchange": exchange_id, "player": "steve", "score": -1})
    assert (await recv(communicator))["type"] == "rated"
    await communicator.disconnect()
    rating = await database_sync_to_async(Rating.objects.get)()
    assert (rating.player_name, rating.score, rating.source, rating.user_id) == ("steve", -1, "game", None)


async def test_a_linked_player_rates_as_their_portal_account(game_server, persona, bob):
    def link():
        code = gateway.player_link_start(user=bob, player_name="steve")
        gateway.player_link_verify(player_name="steve", code=code)

    await database_sync_to_async(link)()
    communicator, exchange_id = await _one_exchange(game_server)
    await send(communicator, {"type": "rate", "exchange": exchange_id, "player": "steve", "score": 1})
    assert (await recv(communicator))["type"] == "rated"
    await communicator.disconnect()
    rating = await database_sync_to_async(Rating.objects.get)()
    assert rating.user_id == bob.pk and rating.player_name == ""


async def test_rating_an_exchange_of_another_server_is_not_found(game_server, persona, bob):
    other, token = await database_sync_to_async(services.game_server_create)(name="Bob's", owner=bob)
    communicator, exchange_id = await _one_exchange(game_server)
    await communicator.disconnect()
    stranger, _, _ = await connect(token)
    await send(stranger, {"type": "rate", "exchange": exchange_id, "player": "steve", "score": 1})
    error = await recv(stranger)
    await stranger.disconnect()
    assert error["code"] == "not_found"
    assert not await database_sync_to_async(Rating.objects.exists)()


async def test_linking_with_the_portals_code(game_server, alice):
    code = await database_sync_to_async(gateway.player_link_start)(user=alice, player_name="steve")
    communicator, _, _ = await connect(game_server.raw_token)
    await send(communicator, {"type": "link", "player": "steve", "code": "WRONGCODE"})
    assert (await recv(communicator))["code"] == "not_found"
    await send(communicator, {"type": "link", "player": "steve", "code": code.lower()})
    assert await recv(communicator) == {"type": "linked", "player": "steve"}
    await send(communicator, {"type": "link", "player": "steve", "code": code})
    assert (await recv(communicator))["code"] == "not_found"  # one time only
    await communicator.disconnect()
    link = await database_sync_to_async(PlayerLink.objects.get)()
    assert link.verified and link.user_id == alice.pk


# --- the embedded default and a real worker process ---------------------------------------------


@pytest.mark.usefixtures("in_memory_topology")
async def test_the_embedded_default_starts_the_worker_inside_the_web_process(game_server, persona):
    with override_settings(VOYAGER_EMBEDDED_WORKER=True, VOYAGER_INFERENCE_BACKEND="echo"):
        communicator, connected, _ = await connect(game_server.raw_token)
        assert connected
        await send(communicator, ask(text="hi there"))
        frames = await collect_until(communicator)
        await communicator.disconnect()
    assert frames[-1]["type"] == "reply" and frames[-1]["text"] == "hi there"


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="a worker process needs the Redis channel layer")
async def test_a_worker_killed_mid_stream_yields_unavailable_not_silence(game_server, persona):
    async with worker_process(delay=0.4) as worker:
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask(text="one two three four five six seven eight nine ten"))
        first = await recv(communicator, timeout=10)
        assert first["type"] == "delta"
        worker.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        frames = await collect_until(communicator, timeout=10)
        await communicator.disconnect()
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "unavailable"
    assert time.monotonic() - killed < 6


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="a worker process needs the Redis channel layer")
async def test_sigterm_drains_the_worker_running_asks_finish_and_new_ones_get_unavailable(game_server, persona):
    async with worker_process(delay=0.1) as worker:
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask(text="one two three four five six seven eight"))
        assert (await recv(communicator, timeout=10))["type"] == "delta"
        worker.send_signal(signal.SIGTERM)
        frames = await collect_until(communicator, timeout=10)
        assert frames[-1]["type"] == "reply" and frames[-1]["text"] == "one two three four five six seven eight"
        exit_code = await asyncio.get_running_loop().run_in_executor(None, worker.wait, 20)
        assert exit_code == 0
        await send(communicator, ask(id="after"))
        error = await recv(communicator, timeout=10)
        await communicator.disconnect()
    assert error["code"] == "unavailable"


async def test_an_ask_taken_by_a_dying_worker_is_answered_unavailable_not_left_to_time_out(game_server, persona):
    store = heartbeats()
    for worker_id in await store.alive():
        await store.forget(worker_id)
    await store.beat("ghost")  # alive when the ask is sent, but it never takes the ask

    async def bystander():  # another worker stays alive throughout (and is busy elsewhere)
        while True:
            await store.beat("bystander")
            await asyncio.sleep(0.5)

    beating = asyncio.create_task(bystander())
    try:
        communicator, _, _ = await connect(game_server.raw_token)
        started = time.monotonic()
        await send(communicator, ask())
        await asyncio.sleep(0.3)
        await store.forget("ghost")  # ...and then it is gone
        error = await recv(communicator, timeout=10)
        await communicator.disconnect()
    finally:
        beating.cancel()
        await store.forget("bystander")
        # Nobody took the ask: take it off the shared channel, or a later test's worker would serve it.
        from channels.layers import get_channel_layer

        from inference.worker import REQUEST_CHANNEL

        await asyncio.wait_for(get_channel_layer().receive(REQUEST_CHANNEL), 5)
    assert error["code"] == "unavailable" and error["id"] == "a1"
    assert time.monotonic() - started < 4  # far from VOYAGER_ASK_TIMEOUT


# --- token changes end open connections ----------------------------------------------------------


async def closed_with(communicator, timeout=5):
    while True:
        out = await communicator.receive_output(timeout=timeout)
        if out["type"] == "websocket.close":
            return out.get("code")


async def test_a_new_token_closes_the_connection_that_used_the_old_one_and_refuses_it(game_server):
    communicator, connected, _ = await connect(game_server.raw_token)
    assert connected
    raw = await database_sync_to_async(services.game_server_rotate_token)(server=game_server)
    assert await closed_with(communicator) == 4401
    _, connected, code = await connect(game_server.raw_token)
    assert (connected, code) == (False, 4401)
    fresh, connected, _ = await connect(raw)
    assert connected
    await fresh.disconnect()


async def test_a_revoked_server_is_disconnected(game_server):
    communicator, _, _ = await connect(game_server.raw_token)
    await database_sync_to_async(services.game_server_revoke)(server=game_server)
    assert await closed_with(communicator) == 4401


async def test_renaming_a_server_keeps_its_connection(game_server):
    communicator, _, _ = await connect(game_server.raw_token)

    def rename():
        game_server.name = "Renamed world"
        game_server.save()

    await database_sync_to_async(rename)()
    await send(communicator, {"type": "ping"})
    assert (await recv(communicator))["type"] == "pong"
    await communicator.disconnect()
