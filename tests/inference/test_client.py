"""The worker client: what it sends, how it routes a worker's answers, and what it does when none come."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from channels.layers import InMemoryChannelLayer

from inference import client as worker_client
from inference.client import NoWorker, WorkerClient, protocol_code
from inference.heartbeat import heartbeats
from inference.worker import REQUEST_CHANNEL


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    async def delta(self, ask, text):
        self.events.append(("delta", ask.key, text))

    async def result(self, ask, result):
        self.events.append(("result", ask.key, result["text"], result["worker_id"]))

    async def error(self, ask, code, message):
        self.events.append(("error", ask.key, code, message))


@pytest.fixture
async def setup():
    """A client on an in-memory layer, with one living worker, ``w1``."""
    layer = InMemoryChannelLayer()
    reply_channel = await layer.new_channel()
    recorder = Recorder()
    store = heartbeats()
    worker_id = f"w-{uuid.uuid4().hex[:6]}"
    await store.beat(worker_id)
    worker_client._live_cache = (0.0, [])
    c = WorkerClient(layer, reply_channel, on_delta=recorder.delta, on_result=recorder.result, on_error=recorder.error)
    yield layer, c, recorder, worker_id
    await c.close()
    await store.forget(worker_id)
    worker_client._live_cache = (0.0, [])


def test_worker_codes_the_client_does_not_know_become_internal():
    assert [protocol_code(c) for c in ("overloaded", "timeout", "invalid")] == ["overloaded", "timeout", "invalid"]
    assert protocol_code("adapter_error") == protocol_code("made-up") == protocol_code(None) == "internal"


async def test_a_request_goes_out_with_its_routing_and_the_answers_come_back_by_key(setup):
    layer, c, recorder, worker_id = setup
    ask = await c.send("a1", {"persona": {"slug": "p"}, "text": "hi"}, timeout=30)
    sent = await layer.receive(REQUEST_CHANNEL)
    assert sent["type"] == "inference.request" and sent["request_id"] == ask.request_id
    assert sent["reply_channel"] == c.reply_channel and sent["text"] == "hi" and sent["deadline"] > 0
    rid = ask.request_id
    await c.handle(
        {
            "type": "inference.delta",
            "request_id": rid,
            "text": "Hel",
            "worker_id": worker_id,
            "worker_channel": "worker!x",
        }
    )
    await c.handle({"type": "inference.delta", "request_id": "someone-elses", "text": "nope"})
    await c.handle({"type": "inference.result", "request_id": rid, "text": "Hello"})
    await c.handle({"type": "inference.delta", "request_id": rid, "text": "late"})  # after the end: dropped
    assert recorder.events == [("delta", "a1", "Hel"), ("result", "a1", "Hello", worker_id)]
    assert "a1" not in c and ask.first_delta is not None


async def test_a_worker_error_is_passed_on_with_the_clients_code(setup):
    layer, c, recorder, _ = setup
    ask = await c.send("a1", {"text": "hi"}, timeout=30)
    await c.handle({"type": "inference.error", "request_id": ask.request_id, "code": "adapter_error", "message": "bad"})
    assert recorder.events == [("error", "a1", "internal", "bad")]


async def test_a_cancel_reaches_the_worker_that_took_the_ask_or_every_worker_before_that(setup):
    layer, c, recorder, worker_id = setup
    worker_channel = await layer.new_channel()
    await layer.group_add("inference.workers", worker_channel)
    unaccepted = await c.send("a1", {"text": "one"}, timeout=30)
    await c.cancel("a1")
    assert await layer.receive(worker_channel) == {"type": "inference.cancel", "request_id": unaccepted.request_id}
    accepted = await c.send("a2", {"text": "two"}, timeout=30)
    mine = await layer.new_channel()
    await c.handle(
        {
            "type": "inference.accepted",
            "request_id": accepted.request_id,
            "worker_id": worker_id,
            "worker_channel": mine,
        }
    )
    await c.cancel("a2")
    assert await layer.receive(mine) == {"type": "inference.cancel", "request_id": accepted.request_id}
    await c.handle({"type": "inference.result", "request_id": accepted.request_id, "text": "too late"})
    assert recorder.events == []  # a cancelled ask says nothing more


async def test_past_its_deadline_an_ask_is_cancelled_and_answered_timeout(setup):
    _, c, recorder, _ = setup
    await c.send("a1", {"text": "hi"}, timeout=0.3)
    await asyncio.sleep(1.0)
    assert recorder.events == [("error", "a1", "timeout", "no reply within the deadline")]
    assert "a1" not in c


async def test_an_ask_whose_worker_stops_beating_is_answered_unavailable(setup):
    _, c, recorder, worker_id = setup
    ask = await c.send("a1", {"text": "hi"}, timeout=30)
    await c.handle(
        {
            "type": "inference.accepted",
            "request_id": ask.request_id,
            "worker_id": worker_id,
            "worker_channel": "worker!x",
        }
    )
    await heartbeats().forget(worker_id)
    await asyncio.sleep(worker_client.LOST_GRACE + 1.0)
    assert recorder.events == [("error", "a1", "unavailable", "the inference worker stopped answering")]


async def test_a_reply_sent_just_before_its_worker_forgot_itself_still_arrives(setup):
    # A draining worker sends its last result and then forgets its heartbeat; the result may
    # reach us a moment after the watch has seen the worker gone.
    _, c, recorder, worker_id = setup
    ask = await c.send("a1", {"text": "hi"}, timeout=30)
    await c.handle(
        {
            "type": "inference.accepted",
            "request_id": ask.request_id,
            "worker_id": worker_id,
            "worker_channel": "worker!x",
        }
    )
    await heartbeats().forget(worker_id)
    await asyncio.sleep(worker_client.LOST_GRACE / 2 + worker_client.WATCH_INTERVAL)
    await c.handle({"type": "inference.result", "request_id": ask.request_id, "text": "hello"})
    assert [event[0] for event in recorder.events] == ["result"]


async def test_with_no_living_worker_nothing_is_sent(setup):
    layer, c, recorder, worker_id = setup
    await heartbeats().forget(worker_id)
    worker_client._live_cache = (0.0, [])
    if await heartbeats().alive():
        pytest.skip("another worker is beating in this store")
    with pytest.raises(NoWorker):
        await c.send("a1", {"text": "hi"}, timeout=30)
    assert len(c) == 0 and recorder.events == []
