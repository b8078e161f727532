"""Database calls on the gateway's hot path (every ask), from the event loop.

Channels' ``database_sync_to_async`` runs Django's connection hygiene around each
call, and with ``CONN_HEALTH_CHECKS`` that makes every call start with a
``SELECT 1`` round trip: on an ask that is two extra round trips, as many as
the ask's own queries. Here the hygiene (health check, ``CONN_MAX_AGE``) runs
at most once a second per thread, and at once after a call that failed, so a
dropped database connection still costs at most the call that found it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

T = TypeVar("T")

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
