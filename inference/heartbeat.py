"""Which inference workers are alive, so the gateway can answer `unavailable` at once.

Each worker stamps its id every second; a stamp older than ``TTL`` seconds
means the worker is gone. With Redis (the scaled topology) the stamps live in
one sorted set all processes read; in the embedded default, in this process.
A beat may carry the worker's numbers (queue depth, tokens per second, ...),
which the web processes export as metrics (``snapshot``).
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref

TTL = 3.0
INTERVAL = 1.0
KEY = "voyager:workers"


class LocalHeartbeats:
    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._stats: dict[str, dict] = {}

    async def beat(self, worker_id: str, stats: dict | None = None) -> None:
        self._seen[worker_id] = time.time()
        if stats is not None:
            self._stats[worker_id] = dict(stats)

    async def forget(self, worker_id: str) -> None:
        self._seen.pop(worker_id, None)
        self._stats.pop(worker_id, None)

    def snapshot(self) -> dict[str, dict]:
        """The live workers and their latest numbers (callable from any thread)."""
        cutoff = time.time() - TTL
        return {w: dict(self._stats.get(w, {})) for w, seen in list(self._seen.items()) if seen >= cutoff}

    async def alive(self) -> list[str]:
        cutoff = time.time() - TTL
        return [w for w, seen in self._seen.items() if seen >= cutoff]

    async def is_alive(self, worker_id: str) -> bool:
        return self._seen.get(worker_id, 0.0) >= time.time() - TTL


class RedisHeartbeats:
    def __init__(self, url: str, key: str = KEY) -> None:
        self.url = url
        self.key = key
        self.stats_key = key + ":stats"
        self._sync_client = None
        # redis.asyncio connections belong to one event loop; tests and Daphne may run several.
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _client(self):
        import redis.asyncio as redis

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = redis.Redis.from_url(self.url)
        return client

    async def beat(self, worker_id: str, stats: dict | None = None) -> None:
        now = time.time()
        client = self._client()
        await client.zadd(self.key, {worker_id: now})
        if stats is not None:
            await client.hset(self.stats_key, worker_id, json.dumps(stats))
        gone = await client.zrangebyscore(self.key, 0, now - 10 * TTL)
        if gone:
            await client.zrem(self.key, *gone)
            await client.hdel(self.stats_key, *gone)

    async def forget(self, worker_id: str) -> None:
        await self._client().zrem(self.key, worker_id)
        await self._client().hdel(self.stats_key, worker_id)

    def snapshot(self) -> dict[str, dict]:
        """The live workers and their latest numbers, read synchronously (the metrics endpoint)."""
        import redis

        if self._sync_client is None:
            self._sync_client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        alive = [m.decode() for m in self._sync_client.zrangebyscore(self.key, time.time() - TTL, "+inf")]
        raw = self._sync_client.hmget(self.stats_key, alive) if alive else []
        out = {}
        for worker, data in zip(alive, raw, strict=True):
            try:
                out[worker] = json.loads(data) if data else {}
            except ValueError:
                out[worker] = {}
        return out

    async def alive(self) -> list[str]:
        members = await self._client().zrangebyscore(self.key, time.time() - TTL, "+inf")
        return [m.decode() for m in members]

    async def is_alive(self, worker_id: str) -> bool:
        score = await self._client().zscore(self.key, worker_id)
        return score is not None and score >= time.time() - TTL


_store = None


def heartbeats():
    """The store for this process's settings (Redis when REDIS_URL is set)."""
    global _store
    if _store is None:
        from django.conf import settings

        if settings.REDIS_URL:
            # One key per deployment (or test run) sharing a Redis, like the channel layer's prefix.
            prefix = settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("prefix", "voyager")
            _store = RedisHeartbeats(settings.REDIS_URL, key=f"{prefix}:workers")
        else:
            _store = LocalHeartbeats()
    return _store
