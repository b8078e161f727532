"""Celery tasks of the portal: parse, call one service, answer.

``adapter_validate`` is safe to run twice (a version that is no longer ``uploaded`` is left as it
is), so it acknowledges late: a worker killed mid-check has the message delivered again.
"""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from agents_app import adapters as lifecycle


@shared_task(
    name="portal.adapter_validate",
    acks_late=True,
    reject_on_worker_lost=True,
    # Loading a base model and a few tokens: seconds for the starter model, a minute or two for a big one.
    soft_time_limit=600,
    time_limit=660,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=10,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=5,
)
def adapter_validate(adapter_id: int) -> str:
    """Smoke-test an uploaded adapter version. Returns its status afterwards."""
    return lifecycle.version_validate(adapter_id=int(adapter_id)).status
