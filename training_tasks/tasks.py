"""Celery tasks: parse, call one service, answer. The pipeline lives in ``training_tasks.services``.

Both tasks are safe to run twice: ``nightly_training`` finds tonight's runs
already made, and ``train_persona`` returns at once for a run that finished.
That is what lets them acknowledge late (a worker killed mid-run has its
message delivered again) and retry transient failures.
"""

from __future__ import annotations

from datetime import date

from celery import shared_task
from django.conf import settings

from agents_app import canary
from training_tasks import services

RETRY = {
    "autoretry_for": services.TRANSIENT_ERRORS,
    "retry_backoff": 30,
    "retry_backoff_max": 15 * 60,
    "retry_jitter": True,
    "max_retries": 5,
}


@shared_task(
    name="training_tasks.nightly_training",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=300,
    time_limit=360,
    **RETRY,
)
def nightly_training(night: str | None = None, min_new_ratings: int | None = None) -> list[int]:
    """Enqueue one ``train_persona`` per persona with enough new ratings. Returns the run pks."""
    return services.nightly_training_enqueue(
        enqueue=train_persona.delay_on_commit,
        night=date.fromisoformat(night) if night else None,
        min_new_ratings=min_new_ratings,
    )


@shared_task(
    bind=True,
    name="training_tasks.train_persona",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.CELERY_TASK_TIME_LIMIT,
    **RETRY,
)
def train_persona(self, run_id: int) -> str:
    """Train, gate and promote one TrainingRun. Returns its final status."""
    try:
        return services.training_run_execute(run_id=int(run_id)).status
    except services.PersonaBusy as exc:
        # Another run for this persona is still going: come back after it.
        raise self.retry(exc=exc, countdown=settings.VOYAGER_TRAINING_BUSY_RETRY, max_retries=48) from exc


@shared_task(
    name="training_tasks.canary_review",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=120,
    time_limit=180,
    **RETRY,
)
def canary_review() -> dict[str, str]:
    """Promote or withdraw each canary whose trial the ratings and battles decide. Returns slug → decision."""
    return canary.canaries_review()
