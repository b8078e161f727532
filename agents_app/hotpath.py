"""Database calls on the gateway's hot path (every ask), from the event loop.

``db``: Channels' ``database_sync_to_async`` runs Django's connection hygiene
around each call, and with ``CONN_HEALTH_CHECKS`` that makes every call start
with a ``SELECT 1`` round trip: on an ask that is two extra round trips, as
many as the ask's own queries. Here the hygiene (health check,
``CONN_MAX_AGE``) runs at most once a second per thread, and at once after a
call that failed, so a dropped database connection still costs at most the
call that found it.

``plan_known`` and ``store``: the check of an ask to an NPC that has answered
before, and the write of a reply the policy passes clean, are one statement
each. On PostgreSQL they run on the event loop's own connection
(``LoopDatabase``, ``VOYAGER_GATEWAY_LOOP_DB``), prepared once; everything
else, and any statement that fails there, goes through ``db`` and the ORM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

T = TypeVar("T")
log = logging.getLogger("voyager.gateway")

HYGIENE_SECONDS = 1.0
_local = threading.local()


def _hygienic(fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
    now = time.monotonic()
    if now - getattr(_local, "hygiene_at", 0.0) > HYGIENE_SECONDS:
        close_old_connections()
        _local.hygiene_at = now
    try:
        return fn(*args, **kwargs)
    except Exception:
        close_old_connections()  # a broken connection is closed now, not on the next call
        raise


_call = sync_to_async(_hygienic, thread_sensitive=True)


async def db(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``await db(service, ...)``: run a service on the database thread, as ``database_sync_to_async`` does."""
    return await _call(fn, args, kwargs)


# --- the event loop's own PostgreSQL connection ----------------------------------------------------


class LoopDatabase:
    """An async psycopg connection per event loop, for the one-statement reads and writes of an ask.

    A call through ``db`` hands the work to the database thread and back: two thread wake-ups
    and a tug of war for the GIL with the event loop, on a path of a few milliseconds. A
    statement run here waits on its socket in the loop like any other I/O. PostgreSQL only
    (``usable`` says), configured as Django configures its own connections (the same
    parameters, loaders, time zone and role), in autocommit: one statement, one transaction.

    A statement that fails, or takes longer than ``timeout``, drops its connection and the next
    call opens a new one; the caller then takes the ``db`` path, which has the ORM's own error
    handling.
    """

    # Seconds a statement may take here; a healthy one takes a millisecond or two.
    timeout = 2.0

    def __init__(self) -> None:
        self._conns: dict[asyncio.AbstractEventLoop, Any] = {}
        self._opening: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    @staticmethod
    def usable() -> bool:
        from django.conf import settings
        from django.db import connections

        return settings.VOYAGER_GATEWAY_LOOP_DB != "off" and connections["default"].vendor == "postgresql"

    async def _connection(self):
        loop = asyncio.get_running_loop()
        conn = self._conns.get(loop)
        if conn is not None and not conn.closed:
            return conn
        lock = self._opening.setdefault(loop, asyncio.Lock())
        async with lock:
            conn = self._conns.get(loop)
            if conn is None or conn.closed:
                conn = self._conns[loop] = await self._open()
                for gone in [other for other in self._conns if other.is_closed()]:
                    self._finish(self._conns.pop(gone))
                    self._opening.pop(gone, None)
        return conn

    @staticmethod
    async def _open():
        import psycopg
        from django.conf import settings
        from django.db import connections

        wrapper = connections["default"]
        params = wrapper.get_connection_params()
        params.pop("cursor_factory", None)
        if settings.VOYAGER_GATEWAY_LOOP_DB == "prepared":
            # The same few statements on every ask: parsed and planned once per connection.
            params.update(cursor_factory=psycopg.AsyncCursor, prepare_threshold=0)
        else:
            params["cursor_factory"] = psycopg.AsyncClientCursor
        conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
        try:
            if wrapper.timezone_name and conn.info.parameter_status("TimeZone") != wrapper.timezone_name:
                await conn.execute(wrapper.ops.set_time_zone_sql(), [wrapper.timezone_name])
            if role := wrapper.settings_dict["OPTIONS"].get("assume_role"):
                await conn.execute(psycopg.sql.SQL("SET ROLE {}").format(psycopg.sql.Identifier(role)))
        except BaseException:
            await conn.close()
            raise
        return conn

    @staticmethod
    def _finish(conn) -> None:
        """Close a connection without its loop (which may be gone): the socket closes at once."""
        with contextlib.suppress(Exception):  # closing a connection that may be broken already
            conn.pgconn.finish()

    def close_all(self) -> None:
        """Close every loop's connection (a test's loop ends; a database is about to be dropped)."""
        for conn in self._conns.values():
            self._finish(conn)
        self._conns.clear()
        self._opening.clear()

    async def _run(self, sql: str, params: list, *, fetch: bool):
        conn = None
        try:
            # A connection that stops answering or cannot be opened (a half-open socket, a lock
            # held elsewhere, an unreachable server) must not hold up every ask behind it: give
            # up, and the caller goes the ORM's way.
            async with asyncio.timeout(self.timeout):
                conn = await self._connection()
                async with conn.cursor() as cursor:
                    await cursor.execute(sql, params)
                    return await cursor.fetchone() if fetch else cursor.rowcount
        except BaseException:
            if conn is None:
                raise
            # Whatever failed (the server, the network, a prepared statement a migration made
            # stale, a query cancelled half-way), the next call starts on a new connection.
            loop = asyncio.get_running_loop()
            if self._conns.get(loop) is conn:
                del self._conns[loop]
            self._finish(conn)
            raise

    async def fetchone(self, sql: str, params: list):
        return await self._run(sql, params, fetch=True)

    async def execute(self, sql: str, params: list) -> int:
        return await self._run(sql, params, fetch=False)


loop_db = LoopDatabase()


async def npc_with_persona(server, npc_world_id: str):
    """``gateway._npc_with_persona`` on the loop's connection."""
    from django.db import connections

    from agents_app import gateway

    wrapper = connections["default"]  # for its SQL dialect and converters: it runs no query here
    sql, params, readers = gateway.npc_select(wrapper, server, npc_world_id)
    return gateway.npc_from_row(await loop_db.fetchone(sql, params), readers, wrapper)


async def insert(obj) -> bool:
    """``gateway._insert`` on the loop's connection; False (nothing done) where only the ORM's
    own save will do."""
    from django.db import connections

    from agents_app import gateway

    wrapper = connections["default"]
    statement = gateway.plain_insert(obj, wrapper)
    if statement is None:
        return False
    await loop_db.execute(*statement)
    obj._state.adding, obj._state.db = False, wrapper.alias
    return True


# --- an ask's check and store, on the loop's connection where they can be ---------------------------


async def plan_known(server, npc_world_id: str, persona_slug: str, *, ask_id: str = "-"):
    """``gateway.ask_prepare(..., with_memory=False)`` for an NPC that has answered before: one
    read on the loop's connection where it can, the database thread otherwise (a new persona
    for the NPC, no such NPC any more, SQLite, a read that failed)."""
    from agents_app import gateway

    if loop_db.usable():
        try:
            npc = await npc_with_persona(server, npc_world_id)
        except Exception:
            log.warning("ask %s: the loop's database read failed, read again", ask_id, exc_info=True)
        else:
            if npc is not None and npc.persona.slug == persona_slug:
                return gateway.plan_for(npc, server=server, with_memory=False)
    return await db(
        gateway.ask_prepare, server=server, npc_world_id=npc_world_id, persona_slug=persona_slug, with_memory=False
    )


async def store(*, ask_id: str = "-", **fields):
    """``gateway.exchange_record(**fields)``: a reply the policy passes clean without a query is
    one INSERT on the loop's connection; anything else goes to the database thread."""
    from agents_app import gateway

    rules = gateway.offline_draft_possible(fields["plan"], fields["result"]) if loop_db.usable() else None
    if rules is None:
        return await db(gateway.exchange_record, **fields)
    draft = gateway.exchange_draft(**fields, rules=rules)
    if not draft.plain:
        return await db(gateway.exchange_write, draft)
    try:
        if await insert(draft.exchange):
            return draft.exchange, draft.verdict
    except Exception:
        log.warning("ask %s: the loop's database write failed, write again", ask_id, exc_info=True)
        return await db(gateway.exchange_write_again, draft)
    return await db(gateway.exchange_write, draft)
