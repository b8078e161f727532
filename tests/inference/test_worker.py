"""The worker process's loop: what it has taken on, it answers, even while it shuts down."""

from __future__ import annotations

import asyncio

from channels.layers import InMemoryChannelLayer

from inference.heartbeat import LocalHeartbeats
from inference.worker import REQUEST_CHANNEL, InferenceWorker
from tests.gateway_client import ScriptedBackend


class SlowLayer(InMemoryChannelLayer):
    """A result takes a while to send, as through a busy broker."""

    async def send(self, channel, message):
        if message.get("type") == "inference.result":
            await asyncio.sleep(0.5)
        await super().send(channel, message)


async def test_a_draining_worker_sends_the_result_it_is_sending_before_it_stops():
    layer = SlowLayer()
    worker = InferenceWorker(ScriptedBackend(deltas=["Hi"]), layer=layer, heartbeats=LocalHeartbeats())
    task = asyncio.create_task(worker.run())
    await worker.started.wait()
    reply = await layer.new_channel()
    await layer.send(
        REQUEST_CHANNEL, {"type": "inference.request", "request_id": "r1", "reply_channel": reply, "text": "hi"}
    )
    while not worker.served:  # the sender has taken the result off the outbox and is sending it
        await asyncio.sleep(0.01)
    worker.stop()
    await asyncio.wait_for(task, 10)
    received = []
    while True:
        try:
            received.append(await asyncio.wait_for(layer.receive(reply), 0.2))
        except TimeoutError:
            break
    assert [m["type"] for m in received][-1] == "inference.result"
    assert received[-1]["text"] == "Hi"
