"""The game gateway's HTTP binding: protocol version 1's frames posted, and one long poll for what comes back."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings
from django.utils import timezone

from agents_app import gateway, http_gateway, services
from agents_app.models import Exchange, GameServer, Npc, Persona, Rating
from agents_app.protocol import MAX_FRAME_BYTES
from inference.heartbeat import heartbeats
from tests.gateway_client import HttpMod, ScriptedBackend, ask, http, running_worker
from tests.processes import child_database_url, child_env, free_port, needs_backends, tail

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def _quick_polls():
    # Polls held 2 s, not 25: a test that waits for "nothing came" waits that long.
    with override_settings(VOYAGER_EMBEDDED_WORKER=False, VOYAGER_HTTP_POLL_SECONDS=2.0):
        yield


@pytest.fixture(autouse=True)
async def _sessions_end_with_the_test():
    """A session outlives the requests that opened it: end this test's before its database goes."""
    yield
    sessions = list(http_gateway._running)
    for task in sessions:
        task.cancel()
    await asyncio.gather(*sessions, return_exceptions=True)


async def opened(server) -> HttpMod:
    mod = await HttpMod(server.raw_token).open()
    assert (await mod.post({"type": "hello", "protocol": 1}))[0] == 202
    status, body = await mod.poll()
    assert status == 200 and body["frames"][0]["type"] == "welcome"
    return mod


async def next_frames(mod, n=1, timeout=10):
    """The next ``n`` frames, over as many polls as they take."""
    frames = []
    deadline = time.monotonic() + timeout
    while len(frames) < n:
        assert time.monotonic() < deadline, f"only {frames}"
        status, body = await mod.poll()
        assert status == 200, (status, body)
        frames += body["frames"]
    return frames


# --- the session and its token ------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "vgs_wrong", "not-even-a-token"])
async def test_a_bad_or_missing_token_opens_no_session(game_server, token):
    status, body = await http("POST", "/http/luanti/session/", token=token)
    assert status == 401 and body["close"] == 4401 and "token" in body["message"]


async def test_a_disabled_server_opens_no_session(game_server):
    await database_sync_to_async(GameServer.objects.filter(pk=game_server.pk).update)(enabled=False)
    status, _ = await http("POST", "/http/luanti/session/", token=game_server.raw_token)
    assert status == 401


async def test_every_request_on_a_session_needs_the_servers_token(game_server, bob_server):
    mod = await HttpMod(game_server.raw_token).open()
    for token in (None, "vgs_wrong"):
        assert (await http("GET", "/http/luanti/poll/", token=token, session=mod.session))[0] == 401
        assert (await http("POST", "/http/luanti/frames/", token=token, session=mod.session, body=b"{}"))[0] == 401
    # Bob's token is good, but the session is Alice's server's: for Bob it does not exist.
    status, body = await http("GET", "/http/luanti/poll/", token=bob_server.raw_token, session=mod.session)
    assert (status, body["close"]) == (410, 4410)


async def test_a_forged_or_missing_session_id_is_gone(game_server):
    for session in (None, "specific.abc!def", "eyJjIjoieCIsInMiOjF9:forged:sig"):
        status, body = await http("GET", "/http/luanti/poll/", token=game_server.raw_token, session=session)
        assert (status, body["close"]) == (410, 4410)


async def test_hello_ping_and_a_bad_hello_are_answered_in_order(game_server, persona):
    mod = await HttpMod(game_server.raw_token).open()
    status, body = await mod.post({"type": "hello", "protocol": 1}, {"type": "hello", "protocol": 2}, {"type": "ping"})
    assert (status, body) == (202, {"frames": 3})
    welcome, error, pong = await next_frames(mod, 3)
    assert welcome == {"type": "welcome", "protocol": 1, "personas": ["miner"]}
    assert error["code"] == "invalid" and "protocol" in error["message"]
    assert pong == {"type": "pong"}


async def test_an_empty_body_is_refused_naming_the_problem(game_server):
    mod = await HttpMod(game_server.raw_token).open()
    status, body = await mod.post(raw=b"\n\n")
    assert status == 400 and "no frame" in body["error"]["message"]


async def test_a_poll_with_nothing_to_say_answers_empty_after_the_poll_time(game_server):
    mod = await opened(game_server)
    started = time.monotonic()
    status, body = await mod.poll()
    assert (status, body["frames"]) == (200, []) and 1.8 < time.monotonic() - started < 4


async def test_frames_stay_until_a_poll_acknowledges_them(game_server):
    mod = await opened(game_server)
    await mod.post({"type": "ping"})
    first = await next_frames(mod)
    mod.seq -= 1  # the answer was lost on its way: poll again from before it
    assert await next_frames(mod) == first == [{"type": "pong"}]


async def test_the_mod_ends_its_session(game_server):
    mod = await opened(game_server)
    status, _ = await http("DELETE", "/http/luanti/session/", token=game_server.raw_token, session=mod.session)
    assert status == 200
    assert (await mod.poll())[0] == 410


@override_settings(VOYAGER_HTTP_SESSION_IDLE=1.5)
async def test_a_session_nobody_polls_ends(game_server):
    mod = await opened(game_server)
    await asyncio.sleep(3.5)
    assert (await mod.poll())[0] == 410


async def test_a_new_token_ends_the_session_that_used_the_old_one(game_server):
    mod = await opened(game_server)
    raw = await database_sync_to_async(services.game_server_rotate_token)(server=game_server)
    await asyncio.sleep(0.3)
    status, body = await http("GET", "/http/luanti/poll/", token=raw, session=mod.session)
    assert (status, body["close"]) == (401, 4401)
    assert (await http("POST", "/http/luanti/session/", token=game_server.raw_token))[0] == 401
    assert (await http("POST", "/http/luanti/session/", token=raw))[0] == 201


# --- bad frames and abuse -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, message",
    [
        ("{not json", "frame is not valid JSON"),
        ("[1, 2]", "frame must be a JSON object"),
        ('{"type": "dance"}', "type: 'dance' is not a known frame type"),
        (json.dumps(ask(text="")), "text: String should have at least 1 character"),
        (json.dumps(ask(max_tokens=10_000)), "max_tokens: Input should be less than or equal to 256"),
        (json.dumps({"type": "rate", "exchange": "nope", "player": "p", "score": 1}), "exchange: Input should be"),
        (json.dumps({"type": "link", "player": "p", "code": "x"}), "code"),
        (json.dumps({"type": "cancel"}), "id: Field required"),
    ],
)
async def test_a_bad_frame_gets_an_error_naming_the_problem_and_the_session_stays(game_server, raw, message):
    mod = await opened(game_server)
    await mod.post(raw=raw.encode() + b"\n" + b'{"type": "ping"}')
    error, pong = await next_frames(mod, 2)
    assert error["type"] == "error" and error["code"] == "invalid" and message in error["message"]
    assert pong == {"type": "pong"}


async def test_an_oversize_frame_ends_the_session_with_413(game_server):
    mod = await opened(game_server)
    status, body = await mod.post(ask(text="x" * MAX_FRAME_BYTES))
    assert (status, body["close"]) == (413, 4413)
    assert (await mod.poll())[0] == 413


async def test_an_oversize_body_is_refused_before_it_is_read(game_server, settings):
    mod = await opened(game_server)
    body = b"\n".join([json.dumps({"type": "ping"}).encode()] * 10_000)
    assert len(body) > settings.VOYAGER_HTTP_MAX_BODY_BYTES
    status, answer = await mod.post(raw=body)
    assert status == 413 and "over the 65536 byte limit" in answer
    assert (await mod.poll())[0] == 200  # nothing of it reached the session


async def test_a_body_that_is_not_text_ends_the_session_with_400(game_server):
    mod = await opened(game_server)
    status, body = await mod.post(raw=b"\xff\xfe\x00")
    assert (status, body["close"]) == (400, 4400)
    assert (await mod.poll())[0] == 400


@override_settings(VOYAGER_GATEWAY_RATE=1.0, VOYAGER_GATEWAY_BURST=5)
async def test_past_the_rate_frames_are_refused_and_a_flood_ends_the_session_with_429(game_server):
    mod = await HttpMod(game_server.raw_token).open()
    await mod.post(*[{"type": "hello", "protocol": 2}] * 6)
    frames = await next_frames(mod, 6)
    assert [f["code"] for f in frames] == ["invalid"] * 5 + ["rate_limited"]
    status, body = await mod.post(*[{"type": "hello", "protocol": 2}] * 10)
    assert (status, body["close"]) == (429, 4429)
    assert (await mod.poll())[0] == 429


# --- asks ---------------------------------------------------------------------------------------


async def test_an_ask_streams_deltas_over_several_polls_then_a_stored_reply(game_server, persona):
    backend = ScriptedBackend(deltas=["Hel", "lo ", "steve!"], actions=[{"name": "jump", "args": []}], gap=0.3)
    async with running_worker(backend):
        mod = await opened(game_server)
        await mod.post(ask(context={"pos": [1, 2, 3]}))
        frames, polls = await mod.frames_until()
    deltas = [f["text"] for f in frames if f["type"] == "delta"]
    reply = frames[-1]
    assert "".join(deltas) == "Hello steve!" == reply["text"] and polls >= 3  # it streamed: not one answer
    assert reply["actions"] == [{"name": "jump", "args": []}] and reply["blocked"] == []
    exchange = await database_sync_to_async(Exchange.objects.get)(pk=reply["exchange"])
    assert exchange.reply_text == "Hello steve!" and exchange.context == {"pos": [1.0, 2.0, 3.0]}


async def test_a_held_poll_is_answered_as_soon_as_a_frame_comes(game_server, persona):
    async with running_worker(ScriptedBackend(deltas=["Aye."], gap=0.5)):
        mod = await opened(game_server)
        poll = asyncio.create_task(mod.poll())
        await asyncio.sleep(0.2)  # the poll is held now
        started = time.monotonic()
        await mod.post(ask())
        status, body = await poll
    assert status == 200 and body["frames"][0]["type"] == "delta" and time.monotonic() - started < 1.5


async def test_actions_off_the_allowlist_are_blocked(game_server, persona):
    async with running_worker(ScriptedBackend(actions=[{"name": "dig", "args": ["0", "0", "0"]}])):
        mod = await opened(game_server)
        await mod.post(ask())
        reply = (await mod.frames_until())[0][-1]
    assert reply["actions"] == [] and reply["blocked"][0]["rule"] == "action_not_allowed"


async def test_an_unknown_persona_and_a_frozen_npc_are_refused(game_server, persona, npc):
    until = timezone.now() + timezone.timedelta(minutes=5)
    await database_sync_to_async(Npc.objects.filter(pk=npc.pk).update)(frozen_until=until)
    async with running_worker(ScriptedBackend()):
        mod = await opened(game_server)
        await mod.post(ask(id="p1", persona="nobody"), ask(id="f1"))
        unknown, frozen = await next_frames(mod, 2)
    assert (unknown["id"], unknown["code"]) == ("p1", "unknown_persona")
    assert (frozen["id"], frozen["code"]) == ("f1", "npc_frozen")


async def test_with_no_worker_an_ask_is_answered_unavailable(game_server, persona):
    store = heartbeats()
    for worker_id in await store.alive():
        await store.forget(worker_id)
    mod = await opened(game_server)
    await mod.post(ask())
    (error,) = await next_frames(mod)
    assert (error["id"], error["code"]) == ("a1", "unavailable")


async def test_a_full_worker_queue_is_answered_overloaded(game_server, persona):
    async with running_worker(ScriptedBackend(mode="overloaded")):
        mod = await opened(game_server)
        await mod.post(ask())
        (error,) = await next_frames(mod)
    assert error["code"] == "overloaded"


@override_settings(VOYAGER_ASK_TIMEOUT=0.6)
async def test_an_ask_past_its_deadline_is_answered_timeout_and_cancelled(game_server, persona):
    backend = ScriptedBackend(mode="silent")
    async with running_worker(backend):
        mod = await opened(game_server)
        await mod.post(ask())
        (error,) = await next_frames(mod)
        await asyncio.sleep(0.3)
    assert error["code"] == "timeout" and backend.cancelled == [backend.requests[0]["request_id"]]


async def test_a_cancelled_ask_is_cancelled_on_the_worker_and_an_id_in_flight_is_refused(game_server, persona):
    backend = ScriptedBackend(mode="silent")
    async with running_worker(backend):
        mod = await opened(game_server)
        await mod.post(ask(), ask())
        (error,) = await next_frames(mod)
        assert error["code"] == "invalid" and "already in flight" in error["message"]
        await asyncio.sleep(0.3)
        await mod.post({"type": "cancel", "id": "a1"}, {"type": "ping"})
        assert await next_frames(mod) == [{"type": "pong"}]
        for _ in range(50):
            if backend.cancelled:
                break
            await asyncio.sleep(0.05)
    assert backend.cancelled == [backend.requests[0]["request_id"]]


async def test_a_frame_the_gateway_fails_on_is_answered_internal(game_server, persona, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("the database is on fire")

    monkeypatch.setattr(gateway, "ask_prepare", broken)
    mod = await opened(game_server)
    await mod.post(ask(), {"type": "ping"})
    error, pong = await next_frames(mod, 2)
    assert (error["id"], error["code"], pong["type"]) == ("a1", "internal", "pong")


# --- rate and link ------------------------------------------------------------------------------


async def test_a_player_rates_and_links_over_http(game_server, persona, bob):
    async with running_worker(ScriptedBackend()):
        mod = await opened(game_server)
        await mod.post(ask())
        exchange_id = (await mod.frames_until())[0][-1]["exchange"]
    code = await database_sync_to_async(gateway.player_link_start)(user=bob, player_name="steve")
    await mod.post(
        {"type": "rate", "exchange": exchange_id, "player": "alex", "score": 1, "reason": "nice"},
        {"type": "rate", "exchange": str(uuid.uuid4()), "player": "alex", "score": 1},
        {"type": "link", "player": "steve", "code": code},
        {"type": "link", "player": "steve", "code": "WRONG123"},
    )
    rated, missing, linked, refused = await next_frames(mod, 4)
    assert rated == {"type": "rated", "exchange": exchange_id}
    assert missing["code"] == "not_found" and refused["code"] == "not_found"
    assert linked == {"type": "linked", "player": "steve"}
    rating = await database_sync_to_async(Rating.objects.get)()
    assert (rating.player_name, rating.score, rating.source) == ("alex", 1, "game")


# --- several Daphne processes -------------------------------------------------------------------


def _request(port, method, path, token, session=None, body=None, timeout=30):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if session:
        request.add_header("X-Voyager-Session", session)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (loopback)
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@needs_backends
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_poll_held_by_one_daphne_is_answered_by_a_reply_produced_on_another(alice, tmp_path):
    import subprocess

    from tests.processes import ROOT

    server = GameServer(name="Alice's world", owner=alice)
    token = server.set_new_token()
    server.save()
    Persona.objects.create(slug="scout", name="Scout", owner=alice)
    env = child_env(
        {
            "DATABASE_URL": child_database_url(),
            "REDIS_URL": os.environ["REDIS_URL"],
            "VOYAGER_CHANNEL_PREFIX": f"http{uuid.uuid4().hex[:8]}",  # no other process takes these requests
            "VOYAGER_EMBEDDED_WORKER": "0",
            "VOYAGER_ECHO_DELAY": "0.2",
            "VOYAGER_HTTP_POLL_SECONDS": "10",
        }
    )
    ports = [free_port(), free_port()]
    procs, logs = [], []
    try:
        daphne = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p"]
        commands = [("worker", [sys.executable, "manage.py", "inference_worker", "--backend", "echo"])]
        commands += [(f"daphne{i}", [*daphne, str(port), "portal.asgi:application"]) for i, port in enumerate(ports)]
        for name, cmd in commands:
            log = tmp_path / f"{name}.log"
            logs.append(log)
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while " ready" not in logs[0].read_text(errors="replace"):
            assert time.monotonic() < deadline, tail(logs[0])
            time.sleep(0.2)
        for port, log in zip(ports, logs[1:], strict=True):
            while True:
                try:
                    _request(port, "GET", "/healthz", token, timeout=2)
                    break
                except OSError:
                    assert time.monotonic() < deadline, tail(log)
                    time.sleep(0.2)

        # The session lives on the first Daphne; the mod's requests all go to the second.
        status, opened_ = _request(ports[0], "POST", "/http/luanti/session/", token)
        assert status == 201, opened_
        session, seq, frames, polls = opened_["session"], 0, [], 0
        hello = json.dumps({"type": "hello", "protocol": 1}).encode()
        words = " ".join(f"w{i}" for i in range(8))
        frame = {"type": "ask", "id": "x1", "npc": "npc-1", "persona": "scout", "player": "steve", "text": words}
        assert _request(ports[1], "POST", "/http/luanti/frames/", token, session, hello)[0] == 202
        assert _request(ports[1], "POST", "/http/luanti/frames/", token, session, json.dumps(frame).encode())[0] == 202
        while not frames or frames[-1]["type"] not in ("reply", "error"):
            status, body = _request(ports[1], "GET", f"/http/luanti/poll/?after={seq}", token, session)
            assert status == 200, body
            seq, polls = body["seq"], polls + 1
            frames += body["frames"]
            assert polls < 50, frames
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(15)
    assert frames[0]["type"] == "welcome"
    reply = frames[-1]
    assert reply["type"] == "reply" and reply["text"] == words, [tail(log) for log in logs]
    assert "".join(f["text"] for f in frames if f["type"] == "delta") == words and polls > 3
    assert Exchange.objects.filter(pk=reply["exchange"]).exists()
