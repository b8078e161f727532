"""The Redis channel layer, with a connection pool that waits when it is full.

Past ``max_connections`` (default 100) a command waits up to ``pool_timeout``
seconds (default 10) for a connection instead of failing at once, as
redis-py's pool does: a hundred game servers connecting at once had made a
handshake fail with "Too many connections". redis-py's blocking pool would
wait too, but costs every command a lock and a timer; this one only pays when
the pool is full.

Everything else is channels-redis's own layer; only the pool it creates differs.
"""

from __future__ import annotations

import asyncio
import time

from channels_redis.core import RedisChannelLayer
from redis.asyncio import ConnectionPool
from redis.exceptions import MaxConnectionsError


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


class WaitingRedisChannelLayer(RedisChannelLayer):
    def create_pool(self, index):
        host = dict(self.hosts[index])
        if "address" not in host:  # Sentinel and the like: the stock layer's pool
            return super().create_pool(index)
        return WaitingConnectionPool.from_url(host.pop("address"), **host)
