"""Arena battles: two versions answer the same words in one batch, hidden until the vote; the versions' leaderboard."""

from __future__ import annotations

import json
import random

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import Client, override_settings

from agents_app import arena
from agents_app.models import Battle, Exchange, PairwiseVote
from agents_app.services import ServiceError
from inference.client import WorkerClient
from inference.worker import REQUEST_CHANNEL
from portal.asgi import application
from tests.factories import adapter
from tests.gateway_client import ScriptedBackend, running_worker
from tests.portal.clients import client_for, csrf_json_post, csrf_post

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def _embedded_off():
    with override_settings(VOYAGER_EMBEDDED_WORKER=False):
        yield


@pytest.fixture
def versions(persona):
    """Miner Mo's active v1 and a candidate v2 on trial."""
    return adapter(persona, 1, status="active"), adapter(persona, 2, status="canary")


@database_sync_to_async
def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def connect(user):
    headers = [(b"host", b"localhost"), (b"origin", b"http://localhost")]
    if user is not None:
        headers.append((b"cookie", f"sessionid={await session_cookie(user)}".encode()))
    communicator = WebsocketCommunicator(application, "/ws/arena/", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


async def battle(communicator, **frame):
    await communicator.send_to(text_data=json.dumps({"type": "battle", "id": "b1", "persona": "miner", **frame}))
    frames, raw = [], []
    while True:
        text = await communicator.receive_from(timeout=10)
        raw.append(text)
        frames.append(json.loads(text))
        if frames[-1]["type"] in ("battle", "error"):
            return frames, raw


# --- the socket ------------------------------------------------------------------------------------


async def test_an_anonymous_socket_is_refused_and_another_origin_too(charlie):
    refused, connected, code = await connect(None)
    assert (connected, code) == (False, 4401)
    await refused.disconnect()  # the consumer ends here, not in the event loop's teardown
    headers = [(b"host", b"localhost"), (b"origin", b"http://evil.example")]
    communicator = WebsocketCommunicator(application, "/ws/arena/", headers=headers)
    assert await communicator.connect() == (False, 4403)
    await communicator.disconnect()


async def test_both_versions_answer_in_one_batch_and_nothing_before_the_vote_names_them(charlie, persona, versions):
    backend = ScriptedBackend(deltas=("Aye", ", friend."), gap=0.02)
    async with running_worker(backend):
        communicator, connected, _ = await connect(charlie)
        assert connected
        frames, raw = await battle(communicator, text="where is iron?")
        await communicator.disconnect()
    done = frames[-1]
    assert done["type"] == "battle", done
    assert set(done) == {"type", "id", "battle", "left", "right"}
    assert done["left"]["text"] == done["right"]["text"] == "Aye, friend."
    assert {f["side"] for f in frames if f["type"] == "delta"} == {"left", "right"}
    # Both requests went to the worker together: the same persona, words and prompt, two adapters.
    assert len(backend.requests) == 2
    assert {r["adapter"]["id"] for r in backend.requests} == {v.pk for v in versions}
    assert backend.requests[0]["text"] == backend.requests[1]["text"] == "where is iron?"
    assert backend.requests[0]["memory"] == backend.requests[1]["memory"] == []

    stored = await database_sync_to_async(lambda: Battle.objects.select_related("left", "right").get())()
    assert str(stored.pk) == done["battle"] and stored.outcome == ""
    assert stored.left.prompt == stored.right.prompt and stored.left.source == Exchange.Source.ARENA
    # What the browser got names neither the versions nor the exchanges (which would lead to them).
    secrets = [str(stored.left_id), str(stored.right_id), "v1", "v2", "adapter", "version", "canary", "active"]
    for text in raw:
        for secret in secrets:
            assert secret not in text, (secret, text)


async def test_a_battle_with_one_failed_side_stores_nothing(charlie, persona, versions):
    async with running_worker(ScriptedBackend(mode="overloaded")):
        communicator, _, _ = await connect(charlie)
        frames, _ = await battle(communicator, text="hi")
        await communicator.disconnect()
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "overloaded"
    counts = await database_sync_to_async(lambda: (Battle.objects.count(), Exchange.objects.count()))()
    assert counts == (0, 0)


@pytest.mark.parametrize(
    "frame, message",
    [
        ({"text": "hi", "a": 7}, "a: v7 of miner cannot battle"),
        ({"text": "hi", "a": 1, "b": 1}, "b: must be a different version"),
        ({"text": "hi", "persona": "nobody"}, "persona: no persona named 'nobody'"),
        ({"text": ""}, "text: String should have at least 1 character"),
        ({"text": "x" * 501}, "text: String should have at most 500 characters"),
        ({"text": "hi", "a": -1}, "a: Input should be greater than or equal to 0"),
    ],
)
async def test_a_bad_battle_is_refused_with_a_message_naming_the_problem(charlie, persona, versions, frame, message):
    async with running_worker(ScriptedBackend()):
        communicator, _, _ = await connect(charlie)
        frames, _ = await battle(communicator, **frame)
        await communicator.disconnect()
    assert frames[-1]["type"] == "error" and message in frames[-1]["message"], frames[-1]
    assert await database_sync_to_async(Battle.objects.count)() == 0


async def test_one_battle_at_a_time(charlie, persona, versions):
    async with running_worker(ScriptedBackend(mode="silent")):
        communicator, _, _ = await connect(charlie)
        await communicator.send_to(
            text_data=json.dumps({"type": "battle", "id": "b1", "persona": "miner", "text": "a"})
        )
        await communicator.send_to(
            text_data=json.dumps({"type": "battle", "id": "b2", "persona": "miner", "text": "b"})
        )
        frame = json.loads(await communicator.receive_from(timeout=5))
        await communicator.disconnect()
    assert (frame["type"], frame["id"], frame["code"]) == ("error", "b2", "overloaded")


async def test_the_client_sends_a_batch_as_one_message_for_one_worker(charlie):
    from inference.heartbeat import heartbeats

    layer = get_channel_layer()
    reply = await layer.new_channel()

    async def ignore(*_args):
        return None

    client = WorkerClient(layer, reply, on_delta=ignore, on_result=ignore, on_error=ignore)
    store = heartbeats()
    await store.beat("a-worker-that-reads-nothing", {})  # alive, so the client sends; nobody takes it
    try:
        asks = await client.send_batch([("x:left", {"text": "a"}, None), ("x:right", {"text": "b"}, None)], timeout=5)
        message = await layer.receive(REQUEST_CHANNEL)
    finally:
        await client.close()
        await store.forget("a-worker-that-reads-nothing")
    assert message["type"] == "inference.batch"
    assert [r["text"] for r in message["requests"]] == ["a", "b"]
    assert [r["request_id"] for r in message["requests"]] == [a.request_id for a in asks]
    assert all(r["reply_channel"] == reply and r["deadline"] > 0 for r in message["requests"])


# --- the vote ------------------------------------------------------------------------------------


def fought(user, persona, versions, rng_seed=0):
    """A battle recorded as the socket records it (both replies stored), not yet voted."""
    plan = arena.battle_prepare(
        user=user, persona=persona, text="where is iron?", player="charlie", rng=random.Random(rng_seed)
    )
    result = {"text": "Down the east tunnel.", "raw_text": "Down the east tunnel.", "prompt": "P", "actions": []}
    other = {**result, "text": "No idea.", "raw_text": "No idea."}
    return arena.battle_record(user=user, plan=plan, left=result, right=other, total_ms=5.0)


def test_the_vote_names_the_versions_and_a_preference_becomes_a_pairwise_vote(charlie, persona, versions):
    b = fought(charlie, persona, versions)
    client = client_for(charlie)
    response = csrf_json_post(client, f"/compare/battles/{b.pk}/vote/", {"outcome": "left"})
    assert response.status_code == 200, response.content
    body = response.json()
    left_version = Exchange.objects.get(pk=b.left_id).adapter_version
    assert body["left"] == f"v{left_version.version}" and {body["left"], body["right"]} == {"v1", "v2"}
    vote = PairwiseVote.objects.get()
    chosen = vote.left_id if vote.outcome == "left" else vote.right_id
    assert chosen == b.left_id and vote.voter == charlie
    assert Battle.objects.get(pk=b.pk).outcome == "left"


def test_a_battle_is_voted_once_and_only_by_its_player(charlie, bob, persona, versions):
    b = fought(charlie, persona, versions)
    response = csrf_json_post(client_for(bob), f"/compare/battles/{b.pk}/vote/", {"outcome": "left"})
    assert response.status_code == 404 and "no battle" in response.json()["error"]
    response = csrf_json_post(client_for(charlie), f"/compare/battles/{b.pk}/vote/", {"outcome": "meh"})
    assert (
        response.status_code == 400
        and "outcome: must be one of left, right, tie, both_bad, skip" in response.json()["error"]
    )
    assert Battle.objects.get(pk=b.pk).outcome == ""
    assert csrf_json_post(client_for(charlie), f"/compare/battles/{b.pk}/vote/", {"outcome": "skip"}).status_code == 200
    again = csrf_json_post(client_for(charlie), f"/compare/battles/{b.pk}/vote/", {"outcome": "right"})
    assert again.status_code == 400 and "already voted skip" in again.json()["error"]
    assert not PairwiseVote.objects.exists(), "a skip says nothing about the replies"
    anonymous = csrf_json_post(client_for(), f"/compare/battles/{b.pk}/vote/", {"outcome": "left"})
    assert anonymous.status_code == 403


def test_a_vote_without_script_redirects_with_the_versions_named(charlie, persona, versions):
    b = fought(charlie, persona, versions)
    response = csrf_post(client_for(charlie), f"/compare/battles/{b.pk}/vote/", {"outcome": "tie"}, follow=True)
    assert "Left was v" in response.content.decode()


def test_the_compare_page_offers_a_battle_and_hides_the_versions_of_an_earlier_pair(charlie, persona, versions, npc):
    from tests.factories import make_exchange

    make_exchange(npc, text="where is iron ore?", adapter_version=versions[0])
    make_exchange(npc, text="where is iron?", reply="Ask the smith.", adapter_version=versions[1])
    body = client_for(charlie).get("/compare/").content.decode()
    assert 'id="battle"' in body and "arena.js" in body
    pair = body[body.index('class="pair"', body.index("Or judge two earlier replies")) :]
    assert "v1" not in pair and "v2" not in pair


def test_versions_are_chosen_by_number_with_sensible_defaults(charlie, persona, versions):
    v1, v2 = versions
    assert arena.battle_versions(persona) == (v1, v2)  # the active one against the canary
    assert arena.battle_versions(persona, a=0) == (None, v2)
    assert arena.battle_versions(persona, b=0) == (v1, None)
    v2.status = "approved"
    v2.save()
    assert arena.battle_versions(persona) == (v1, v2)  # no canary: the newest other version
    v2.delete()
    assert arena.battle_versions(persona) == (v1, None)  # only the base model is left to fight
    v1.status = "retired"
    v1.save()
    with pytest.raises(ServiceError, match="has only one version"):
        arena.battle_versions(persona)


# --- the leaderboard ---------------------------------------------------------------------------------


def test_the_leaderboard_ranks_versions_by_their_battles_with_intervals_and_counts(charlie, persona, versions):
    v1, v2 = versions
    for k in range(12):
        b = fought(charlie, persona, versions, rng_seed=k)
        left_is_v2 = Exchange.objects.get(pk=b.left_id).adapter_version_id == v2.pk
        outcome = "tie" if k == 0 else ("left" if left_is_v2 else "right")  # v2 wins all but one tie
        arena.battle_vote(user=charlie, battle_id=b.pk, outcome=outcome)
    arena.battle_vote(user=charlie, battle_id=fought(charlie, persona, versions).pk, outcome="both_bad")
    body = client_for().get("/compare/leaderboard/").content.decode()
    board = body[body.index('id="board-miner"') :]
    assert board.index(">v2<") < board.index(">v1<")
    boards = arena.leaderboard([persona], rounds=50)
    ((_, standings),) = boards
    best, worst = standings
    assert (best.label, worst.label) == ("v2", "v1")
    assert (best.rating.wins, best.rating.losses, best.rating.battles) == (11.5, 0.5, 12)
    assert best.rating.low <= best.rating.rating <= best.rating.high
    assert f"{best.rating.battles}</td>" in board
    # The board links each version to its page; a canary's is public like the active version's.
    assert client_for().get(f"/personas/miner/v{v2.version}/").status_code == 200


def test_the_leaderboard_says_when_nothing_is_decided(persona):
    assert "No battles decided yet" in client_for().get("/compare/leaderboard/").content.decode()
