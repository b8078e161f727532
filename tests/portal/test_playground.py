"""The browser playground at /ws/playground/: session auth, origin checks, the game's worker path."""

from __future__ import annotations

import json
import os

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client, override_settings

from agents_app.models import Exchange, Npc, PolicyFlag
from inference.heartbeat import heartbeats
from portal.asgi import application
from portal.selectors import feed_page
from tests.factories import adapter
from tests.gateway_client import ScriptedBackend, running_worker
from tests.gateway_client import connect as connect_game_server
from tests.processes import worker_process

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

ORIGIN_REFUSED = 4403  # the playground's close code for a page of another origin


@pytest.fixture(autouse=True)
def _embedded_off():
    with override_settings(VOYAGER_EMBEDDED_WORKER=False):
        yield


@database_sync_to_async
def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def connect(user=None, origin=b"http://localhost", host=b"localhost", extra=()):
    """A handshake as a browser on http://localhost sends it: Host, Origin and the session cookie."""
    headers = [(b"host", host)] if host is not None else []
    headers.extend(extra)
    if user is not None:
        headers.append((b"cookie", f"sessionid={await session_cookie(user)}".encode()))
    if origin is not None:
        headers.append((b"origin", origin))
    communicator = WebsocketCommunicator(application, "/ws/playground/", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


async def handshake(user=None, **kwargs):
    """(connected, close code) of one handshake; a socket that opened is closed again at once."""
    communicator, connected, code = await connect(user, **kwargs)
    if connected:
        await communicator.disconnect()
    return connected, code


async def send(communicator, frame):
    await communicator.send_to(text_data=json.dumps(frame))


async def until_done(communicator):
    frames = []
    while True:
        frame = json.loads(await communicator.receive_from(timeout=10))
        frames.append(frame)
        if frame["type"] in ("reply", "error"):
            return frames


async def test_an_anonymous_socket_is_refused_with_4401():
    _, connected, code = await connect(None)
    assert (connected, code) == (False, 4401)


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param(b"http://localhost:8001", id="another-port"),
        pytest.param(b"https://localhost", id="another-scheme"),
        pytest.param(b"http://evil.example", id="another-host"),
        pytest.param(b"http://localhost.evil.example", id="a-host-that-starts-like-ours"),
        pytest.param(b"null", id="an-opaque-origin"),
        pytest.param(None, id="no-origin"),
    ],
)
async def test_a_page_of_another_origin_cannot_open_the_playground_socket(charlie, origin):
    assert await handshake(charlie, origin=origin) == (False, ORIGIN_REFUSED)


@pytest.mark.parametrize(
    "host, origin",
    [
        (b"localhost", b"http://localhost"),
        (b"localhost:8000", b"http://localhost:8000"),
        (b"LocalHost:80", b"http://localhost"),  # the default port, written or not, is the same port
        (b"[::1]:8000", b"http://[::1]:8000"),
    ],
)
async def test_a_page_of_the_sites_own_origin_opens_the_playground_socket(charlie, host, origin):
    connected, _ = await handshake(charlie, origin=origin, host=host)
    assert connected


async def test_a_host_the_site_does_not_serve_is_no_origin_of_its_own(charlie):
    # DNS rebinding: evil.example resolves to this server, and the page's Origin equals the Host it sends.
    assert await handshake(charlie, origin=b"http://evil.example", host=b"evil.example") == (False, ORIGIN_REFUSED)


async def test_behind_a_tls_proxy_only_the_https_page_is_the_sites_own(charlie):
    proto = [(b"x-forwarded-proto", b"https")]
    with override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
        assert (await handshake(charlie, origin=b"https://localhost", extra=proto))[0]
        assert await handshake(charlie, origin=b"http://localhost", extra=proto) == (False, ORIGIN_REFUSED)
        # Without the proxy's word the request came in on http.
        assert await handshake(charlie, origin=b"https://localhost") == (False, ORIGIN_REFUSED)


async def test_csrf_trusted_origins_may_open_it_on_their_own_scheme_and_port_only(charlie):
    trusted = ["https://portal.example.org", "https://*.voyager.example"]
    with override_settings(CSRF_TRUSTED_ORIGINS=trusted):
        for origin in (b"https://portal.example.org", b"https://portal.example.org:443", b"https://eu.voyager.example"):
            connected, _ = await handshake(charlie, origin=origin)
            assert connected, origin
        for origin in (
            b"https://portal.example.org:8443",
            b"http://portal.example.org",
            b"https://voyager.example.evil",
        ):
            assert await handshake(charlie, origin=origin) == (False, ORIGIN_REFUSED), origin


async def test_the_game_socket_takes_a_token_and_no_origin(game_server):
    communicator, connected, _ = await connect_game_server(game_server.raw_token)
    assert connected
    await communicator.disconnect()


@pytest.mark.parametrize(
    "value, origin",
    [
        ("http://localhost", ("http", "localhost", 80)),
        ("HTTPS://Portal.Example.ORG:443", ("https", "portal.example.org", 443)),
        ("http://[::1]:8000", ("http", "::1", 8000)),
        ("null", None),
        ("ws://localhost", None),
        ("http://localhost:99999", None),
        ("http://user:pass@localhost", None),
        ("", None),
    ],
)
def test_an_origin_is_its_scheme_host_and_port(value, origin):
    from portal.origins import parse_origin

    assert parse_origin(value) == origin


async def test_an_ask_streams_through_the_worker_and_is_stored_as_a_rateable_playground_exchange(charlie, persona):
    backend = ScriptedBackend(
        deltas=("Hello", " friend"), actions=[{"name": "jump", "args": []}, {"name": "fly"}], gap=0.05
    )
    async with running_worker(backend):
        communicator, connected, _ = await connect(charlie)
        assert connected
        await send(communicator, {"type": "ask", "id": "p1", "persona": "miner", "text": "hi <b>there</b>"})
        frames = await until_done(communicator)
        await communicator.disconnect()
    deltas = [f["text"] for f in frames if f["type"] == "delta"]
    assert deltas and "".join(deltas) == "Hello friend"  # the worker may merge deltas under load
    reply = frames[-1]
    assert reply["type"] == "reply" and reply["text"] == "Hello friend"
    assert reply["actions"] == [{"name": "jump", "args": []}]
    assert reply["blocked"] == [{"name": "fly", "args": [], "rule": "action_not_allowed"}]
    exchange = await database_sync_to_async(Exchange.objects.select_related("npc").get)(pk=reply["exchange"])
    assert exchange.source == "playground" and exchange.npc.game_server_id is None
    assert exchange.player_text == "hi <b>there</b>"
    assert await database_sync_to_async(PolicyFlag.objects.filter(exchange=exchange).count)() == 1
    # The playground went through the same plan as the game: persona and memory in the request.
    assert backend.requests[0]["persona"]["slug"] == "miner" and backend.requests[0]["adapter"] is None
    page = await database_sync_to_async(lambda: feed_page(viewer=charlie, mine=True))()
    assert [i.exchange.pk for i in page.items] == [exchange.pk] and page.items[0].shown_player == "you"


async def test_an_approved_version_can_be_chosen_but_not_an_unapproved_one(charlie, persona):
    v1 = await database_sync_to_async(adapter)(persona, 1, status="approved")
    await database_sync_to_async(adapter)(persona, 2, status="validated")
    backend = ScriptedBackend()
    async with running_worker(backend):
        communicator, _, _ = await connect(charlie)
        await send(communicator, {"type": "ask", "id": "a", "persona": "miner", "text": "hi", "version": 1})
        reply = (await until_done(communicator))[-1]
        await send(communicator, {"type": "ask", "id": "b", "persona": "miner", "text": "hi", "version": 2})
        error = (await until_done(communicator))[-1]
        await communicator.disconnect()
    assert backend.requests[0]["adapter"]["id"] == v1.pk
    exchange = await database_sync_to_async(Exchange.objects.get)(pk=reply["exchange"])
    assert exchange.adapter_version_id == v1.pk
    assert error["type"] == "error" and error["id"] == "b" and "version" in error["message"]


@pytest.mark.parametrize(
    "frame, field",
    [
        ("not json", "frame"),
        ({"type": "dance"}, "type"),
        ({"type": "ask", "id": "x", "persona": "miner"}, "text"),
        ({"type": "ask", "id": "x", "persona": "miner", "text": "x" * 501}, "text"),
        ({"type": "ask", "id": "x", "persona": "miner", "text": "hi", "version": 0}, "version"),
    ],
)
async def test_a_bad_frame_gets_an_error_naming_the_field(charlie, persona, frame, field):
    communicator, _, _ = await connect(charlie)
    await communicator.send_to(text_data=frame if isinstance(frame, str) else json.dumps(frame))
    error = json.loads(await communicator.receive_from(timeout=5))
    assert error["type"] == "error" and error["code"] == "invalid" and error["message"].startswith(field)
    await communicator.disconnect()


async def test_a_private_persona_of_someone_else_is_unknown(charlie, private_persona):
    async with running_worker(ScriptedBackend()):
        communicator, _, _ = await connect(charlie)
        await send(communicator, {"type": "ask", "id": "s", "persona": "secret", "text": "hi"})
        error = (await until_done(communicator))[-1]
        await communicator.disconnect()
    assert error["code"] == "not_found" and "secret" in error["message"]
    assert not await database_sync_to_async(Npc.objects.filter(persona=private_persona).exists)()


async def play(user, persona: str, id="p"):
    """The frames that answer one playground ask, and what the worker was sent."""
    backend = ScriptedBackend()
    async with running_worker(backend):
        communicator, _, _ = await connect(user)
        await send(communicator, {"type": "ask", "id": id, "persona": persona, "text": "hi"})
        frames = await until_done(communicator)
        await communicator.disconnect()
    return frames, backend.requests


def refused_as_unknown(frames, slug, id="p"):
    return frames == [
        {"type": "error", "code": "not_found", "message": f"persona: no persona named {slug!r}", "id": id}
    ]


async def test_a_private_persona_is_refused_in_the_playground_exactly_as_one_that_does_not_exist(
    charlie, private_persona
):
    frames, requests = await play(charlie, "secret")
    assert refused_as_unknown(frames, "secret") and requests == []
    assert refused_as_unknown((await play(charlie, "nobody"))[0], "nobody")


async def test_its_owner_and_a_moderator_talk_to_a_private_persona_in_the_playground(alice, dana, private_persona):
    for user in (alice, dana):
        frames, requests = await play(user, "secret")
        assert frames[-1]["type"] == "reply" and requests[0]["persona"]["slug"] == "secret"


async def test_a_share_with_a_game_server_lets_its_owner_talk_to_nobody_in_the_playground(
    bob, bob_server, private_persona
):
    from agents_app.services import persona_share_add

    await database_sync_to_async(persona_share_add)(persona=private_persona, server_id=bob_server.pk)
    frames, requests = await play(bob, "secret")
    assert refused_as_unknown(frames, "secret") and requests == []


async def test_a_playground_npc_of_a_persona_made_private_since_is_refused(charlie, persona):
    assert (await play(charlie, "miner"))[0][-1]["type"] == "reply"
    await database_sync_to_async(type(persona).objects.filter(pk=persona.pk).update)(is_public=False)
    frames, requests = await play(charlie, "miner", id="q")
    assert refused_as_unknown(frames, "miner", id="q") and requests == []


def test_the_playground_rule_holds_in_the_gateways_read_too(charlie, persona, private_persona):
    """Even a caller that skipped the portal's check gets the rule: ask_prepare applies it for a person."""
    from agents_app import gateway
    from agents_app.services import ServiceError

    Npc.objects.create(game_server=None, world_id=f"playground:{charlie.pk}:secret", persona=private_persona)
    with pytest.raises(ServiceError) as refused:
        gateway.ask_prepare(
            server=None, user=charlie, npc_world_id=f"playground:{charlie.pk}:secret", persona_slug="secret"
        )
    assert refused.value.code == "unknown_persona"


async def test_with_no_worker_running_the_answer_is_unavailable(charlie, persona):
    store = heartbeats()
    for worker_id in await store.alive():
        await store.forget(worker_id)
    communicator, _, _ = await connect(charlie)
    await send(communicator, {"type": "ask", "id": "u", "persona": "miner", "text": "hi"})
    error = (await until_done(communicator))[-1]
    await communicator.disconnect()
    assert error["code"] == "unavailable"


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="a worker process needs the Redis channel layer")
async def test_a_worker_killed_mid_reply_is_answered_unavailable(charlie, persona):
    """The playground watches its ask as the game gateway does (one worker client for both)."""
    import signal
    import time

    async with worker_process(delay=0.4) as worker:
        communicator, _, _ = await connect(charlie)
        await send(communicator, {"type": "ask", "id": "k", "persona": "miner", "text": "one two three four five six"})
        first = json.loads(await communicator.receive_from(timeout=10))
        assert first["type"] == "delta"
        worker.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        frames = await until_done(communicator)
        await communicator.disconnect()
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "unavailable" and frames[-1]["id"] == "k"
    assert time.monotonic() - killed < 6


async def test_an_oversize_frame_closes_the_socket(charlie):
    communicator, _, _ = await connect(charlie)
    await communicator.send_to(text_data="x" * 5000)
    assert (await communicator.receive_output(timeout=5))["code"] == 4413
    await communicator.disconnect()  # end the consumer inside the test, not at loop teardown


async def test_a_frozen_playground_npc_refuses(charlie, persona):
    from django.utils import timezone

    await database_sync_to_async(Npc.objects.create)(
        game_server=None,
        world_id=f"playground:{charlie.pk}:miner",
        persona=persona,
        frozen_until=timezone.now() + timezone.timedelta(hours=1),
    )
    async with running_worker(ScriptedBackend()):
        communicator, _, _ = await connect(charlie)
        await send(communicator, {"type": "ask", "id": "f", "persona": "miner", "text": "hi"})
        error = (await until_done(communicator))[-1]
        await communicator.disconnect()
    assert error["code"] == "npc_frozen"


@pytest.mark.usefixtures("in_memory_topology")
async def test_the_embedded_default_starts_the_worker_inside_the_web_process(charlie, persona):
    with override_settings(VOYAGER_EMBEDDED_WORKER=True, VOYAGER_INFERENCE_BACKEND="echo"):
        communicator, connected, _ = await connect(charlie)
        assert connected
        await send(communicator, {"type": "ask", "id": "e", "persona": "miner", "text": "hello echo"})
        frames = await until_done(communicator)
        await communicator.disconnect()
    assert frames[-1]["type"] == "reply" and frames[-1]["text"] == "hello echo"


async def test_an_owner_tries_a_validated_version_as_a_test_that_stays_out_of_the_feed_and_training(
    alice, charlie, persona
):
    from portal.access import visible_exchanges
    from training_tasks.dataset import usable_exchanges

    v2 = await database_sync_to_async(adapter)(persona, 2, status="validated")
    backend = ScriptedBackend()
    async with running_worker(backend):
        communicator, _, _ = await connect(alice)
        await send(communicator, {"type": "ask", "id": "t", "persona": "miner", "text": "hi", "version": 2})
        reply = (await until_done(communicator))[-1]
        await communicator.disconnect()
    assert reply["type"] == "reply" and backend.requests[0]["adapter"]["id"] == v2.pk
    exchange = await database_sync_to_async(Exchange.objects.get)(pk=reply["exchange"])
    assert exchange.is_test and exchange.adapter_version_id == v2.pk

    def seen_by(user, **filters):
        return [i.exchange.pk for i in feed_page(viewer=user, **filters).items]

    assert await database_sync_to_async(seen_by)(alice, mine=True) == [exchange.pk]
    assert await database_sync_to_async(seen_by)(charlie) == []
    assert not await database_sync_to_async(visible_exchanges(charlie).filter(pk=exchange.pk).exists)()
    assert not await database_sync_to_async(usable_exchanges(persona).filter(pk=exchange.pk).exists)()


async def test_a_rejected_version_does_not_talk_even_to_its_owner(alice, persona):
    await database_sync_to_async(adapter)(persona, 3, status="rejected")
    async with running_worker(ScriptedBackend()) as _:
        communicator, _, _ = await connect(alice)
        await send(communicator, {"type": "ask", "id": "r", "persona": "miner", "text": "hi", "version": 3})
        error = (await until_done(communicator))[-1]
        await communicator.disconnect()
    assert error["type"] == "error" and "v3 is rejected" in error["message"]
