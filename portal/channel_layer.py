"""The Redis channel layer, with fewer round trips per message.

channels-redis 4.3 sends a message in four round trips (trim expired, count,
add, expire) and receives one in four (restore the backup queue, blocking pop,
back the message up, clear the backup). Every ask crosses the layer twice
(request, result), so that is 16 round trips, each a wait and a slice of CPU
on both sides. This layer keeps the same keys, capacity and expiry:

- ``send``: one round trip (a Lua script).
- ``receive``: one round trip when a message is waiting (a script that puts
  back what an interrupted stock receiver left in the backup queue, then pops);
  an empty channel falls back to the blocking pop, and the message it returns
  is handed on at once.

No backup copy is written. The stock layer backs each popped message up with
one more round trip after the pop and removes the copy the moment the message
is returned, before anyone handles it: the copy only covers a receive
cancelled during that extra round trip, and the round trip itself sits
between every message and its consumer. Here there is no await between the
pop's answer and the hand-over, so there is no such window to cover. A
receive cancelled while it waits loses nothing (the message stays in Redis);
one cancelled while the pop's answer is on the wire loses it, as with the
stock layer.

Past ``max_connections`` (default 100) a command waits up to
``pool_timeout`` seconds (default 10) for a connection instead of failing at
once, as redis-py's pool does: a hundred game servers connecting at once had
made a handshake fail with "Too many connections". redis-py's blocking pool
would wait too, but costs every command a lock and a timer (12 µs of CPU
each, measured); this one only pays when the pool is full.

Messages and keys are the stock layer's, so processes on either layer talk to
each other. The overridden methods are channels-redis internals: the version is
pinned in ``pyproject.toml`` and ``tests/portal/test_channel_layer.py`` covers
the behaviour (order, capacity, expiry, cancellation, a stock receiver's
leftovers).
"""

from __future__ import annotations

import asyncio
import time

from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer
from redis.asyncio import ConnectionPool
from redis.exceptions import MaxConnectionsError

SEND = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# Put back what an interrupted stock receiver left in the backup queue, then take the
# oldest message, if any.
POP = """
local backed_up = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = #backed_up, 1, -2 do
    redis.call('ZADD', KEYS[1], backed_up[i], backed_up[i - 1])
end
redis.call('DEL', KEYS[2])
local popped = redis.call('ZPOPMIN', KEYS[1])
if popped[1] then
    return popped[1]
end
return false
"""


class WaitingConnectionPool(ConnectionPool):
    """redis-py's pool, except that a command finding every connection in use waits for one."""

    POLL_SECONDS = 0.002

    def __init__(self, *args, pool_timeout: float = 10.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pool_timeout = pool_timeout

    async def get_connection(self, *args, **kwargs):
        give_up = None
        while True:
            try:
                return await super().get_connection(*args, **kwargs)
            except MaxConnectionsError:
                now = time.monotonic()
                give_up = give_up if give_up is not None else now + self.pool_timeout
                if now >= give_up:
                    raise
                await asyncio.sleep(self.POLL_SECONDS)


class FastRedisChannelLayer(RedisChannelLayer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._scripts: dict[str, object] = {}

    def create_pool(self, index):
        host = dict(self.hosts[index])
        if "address" not in host:  # Sentinel and the like: the stock layer's pool
            return super().create_pool(index)
        return WaitingConnectionPool.from_url(host.pop("address"), **host)

    def _script(self, connection, source: str):
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = connection.register_script(source)
        return script

    async def send(self, channel, message):
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        channel_non_local_name = channel
        if "!" in channel:
            message = dict(message.items())
            message["__asgi_channel__"] = channel
            channel_non_local_name = self.non_local_name(channel)
        channel_key = self.prefix + channel_non_local_name
        index = self.consistent_hash(channel) if "!" in channel else next(self._send_index_generator)
        connection = self.connection(index)
        now = time.time()
        added = await self._script(connection, SEND)(
            keys=[channel_key],
            args=[
                self.serialize(message),
                now,
                int(now) - int(self.expiry),
                self.get_capacity(channel),
                int(self.expiry),
            ],
            client=connection,
        )
        if not added:
            raise ChannelFull()

    async def _brpop_with_clean(self, index, channel, timeout):
        backup_queue = self._backup_channel_name(channel)
        connection = self.connection(index)
        member = await self._script(connection, POP)(keys=[channel, backup_queue], client=connection)
        if member:
            return member
        # Nothing waiting: block (cancelling while nothing has come loses nothing).
        result = await connection.bzpopmin(channel, timeout=timeout)
        if result is None:
            return None
        return result[1]

    async def _clean_receive_backup(self, index, channel):
        """Nothing to clean: this layer writes no backup copy (see the module docstring)."""
