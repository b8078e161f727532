"""The suite runs on the backends the environment names, for real.

When DATABASE_URL or REDIS_URL is set (CI sets both), these fail if the
process fell back to SQLite or to the in-memory channel layer.
"""

import os
import uuid

import pytest
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection

from portal.celery import app as celery_app


@pytest.mark.django_db
def test_the_database_is_the_one_database_url_names():
    url = os.environ.get("DATABASE_URL", "")
    expected = "postgresql" if url.startswith(("postgres://", "postgresql://")) else "sqlite"
    assert connection.vendor == expected
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


async def test_the_channel_layer_is_the_one_redis_url_names():
    layer = get_channel_layer()
    if os.environ.get("REDIS_URL"):
        from portal.channel_layer import WaitingRedisChannelLayer

        assert isinstance(layer, WaitingRedisChannelLayer)
    else:
        from channels.layers import InMemoryChannelLayer

        assert isinstance(layer, InMemoryChannelLayer)
    channel = f"test.roundtrip.{uuid.uuid4().hex}"
    await layer.send(channel, {"type": "test.message", "n": 42})
    assert (await layer.receive(channel))["n"] == 42


def test_celery_uses_the_redis_broker_when_redis_url_is_set():
    if os.environ.get("REDIS_URL"):
        assert celery_app.conf.broker_url == settings.REDIS_URL
        assert not celery_app.conf.task_always_eager
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2)
            assert conn.transport_cls == "redis" or conn.transport.driver_type == "redis"
    else:
        assert celery_app.conf.task_always_eager
    # Acknowledge after the work, and never lose a task to a dying worker.
    assert celery_app.conf.task_acks_late and celery_app.conf.task_reject_on_worker_lost
    assert celery_app.conf.broker_transport_options["visibility_timeout"] > celery_app.conf.task_time_limit
