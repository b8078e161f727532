"""The Redis channel layer with the waiting pool keeps the stock layer's behaviour, on the real Redis."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer

from portal.channel_layer import WaitingRedisChannelLayer

pytestmark = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs Redis (REDIS_URL)")


def layers(**config):
    """Our layer and a stock one on the same Redis and a prefix of their own."""
    common = {"hosts": [os.environ.get("REDIS_URL", "")], "prefix": f"test-layer-{uuid.uuid4().hex[:8]}", **config}
    return WaitingRedisChannelLayer(**common), RedisChannelLayer(**common)


async def test_messages_arrive_in_order_and_both_layers_read_each_others():
    fast, stock = layers()
    for n in range(5):
        await fast.send("test.order", {"type": "m", "n": n})
    assert [(await stock.receive("test.order"))["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
    for n in range(3):
        await stock.send("test.back", {"type": "m", "n": n})
    assert [(await fast.receive("test.back"))["n"] for _ in range(3)] == [0, 1, 2]
    await fast.flush()


async def test_a_process_local_channel_round_trips():
    fast, _ = layers()
    channel = await fast.new_channel()
    await fast.send(channel, {"type": "m", "text": "hi"})
    assert (await asyncio.wait_for(fast.receive(channel), 5))["text"] == "hi"
    await fast.flush()


async def test_a_full_channel_refuses_the_message_and_keeps_the_rest():
    fast, _ = layers(capacity=2)
    await fast.send("test.full", {"type": "m", "n": 1})
    await fast.send("test.full", {"type": "m", "n": 2})
    with pytest.raises(ChannelFull):
        await fast.send("test.full", {"type": "m", "n": 3})
    assert [(await fast.receive("test.full"))["n"] for _ in range(2)] == [1, 2]
    await fast.send("test.full", {"type": "m", "n": 4})  # room again
    assert (await fast.receive("test.full"))["n"] == 4
    await fast.flush()


async def test_expired_messages_are_dropped_on_the_next_send():
    fast, _ = layers(expiry=1)
    await fast.send("test.old", {"type": "m", "n": "old"})
    await asyncio.sleep(2.2)
    await fast.send("test.old", {"type": "m", "n": "new"})
    assert (await fast.receive("test.old"))["n"] == "new"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(fast.receive("test.old"), 0.5)
    await fast.flush()


async def test_what_an_interrupted_stock_receiver_backed_up_is_delivered_again():
    fast, stock = layers()
    await stock.send("test.backup", {"type": "m", "n": 7})
    key = fast.prefix + "test.backup"
    # A stock receiver takes the message off the channel, backs it up, and dies before the clean-up...
    assert await stock._brpop_with_clean(0, key, timeout=1) is not None
    assert await fast.connection(0).zcard(key) == 0
    assert await fast.connection(0).zcard(stock._backup_channel_name(key)) == 1
    # ...and the next receive finds it restored from the backup queue.
    assert (await asyncio.wait_for(fast.receive("test.backup"), 5))["n"] == 7
    assert await fast.connection(0).zcard(stock._backup_channel_name(key)) == 0
    await fast.flush()


@pytest.mark.parametrize("local", [False, True], ids=["shared-channel", "process-local-channel"])
async def test_a_receive_cancelled_while_it_waits_loses_nothing(local):
    fast, stock = layers()
    channel = await fast.new_channel() if local else "test.cancelled"
    waiting = asyncio.ensure_future(fast.receive(channel))
    await asyncio.sleep(0.2)  # blocked in Redis by now
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await stock.send(channel, {"type": "m", "n": "kept"})
    assert (await asyncio.wait_for(fast.receive(channel), 5))["n"] == "kept"
    key = fast.prefix + (fast.non_local_name(channel) if local else channel)
    assert await fast.connection(0).zcard(fast._backup_channel_name(key)) == 0  # no copy left behind
    await fast.flush()


async def test_a_receive_waiting_on_an_empty_channel_gets_a_message_sent_later():
    fast, stock = layers()
    waiting = asyncio.ensure_future(fast.receive("test.later"))
    await asyncio.sleep(0.2)
    await stock.send("test.later", {"type": "m", "n": "late"})
    assert (await asyncio.wait_for(waiting, 5))["n"] == "late"
    await fast.flush()


async def test_more_commands_at_once_than_connections_wait_for_one_instead_of_failing():
    hosts = [{"address": os.environ.get("REDIS_URL", ""), "max_connections": 3}]
    fast, _ = layers(hosts=hosts)
    channels = [await fast.new_channel() for _ in range(3)]
    await asyncio.gather(*(fast.group_add("test.crowd", c) for c in channels for _ in range(20)))
    await asyncio.gather(*(fast.send("test.many", {"type": "m", "n": n}) for n in range(60)))
    assert sorted([(await fast.receive("test.many"))["n"] for _ in range(60)]) == list(range(60))
    await fast.flush()


async def test_a_command_that_waits_past_the_pool_timeout_names_the_problem():
    from redis.exceptions import MaxConnectionsError

    hosts = [{"address": os.environ.get("REDIS_URL", ""), "max_connections": 1, "pool_timeout": 0.2}]
    fast, _ = layers(hosts=hosts)
    waiting = asyncio.create_task(fast.receive("test.empty"))  # its blocking pop holds the one connection
    await asyncio.sleep(0.1)
    with pytest.raises(MaxConnectionsError, match="Too many connections"):
        await fast.send("test.other", {"type": "m"})
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
