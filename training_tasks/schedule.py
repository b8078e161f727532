"""The default beat schedule, kept in code and written to django-celery-beat's tables."""

from __future__ import annotations

import json

from django.conf import settings
from django.db import transaction

NIGHTLY_TASK_NAME = "voyager: nightly training"


@transaction.atomic
def training_schedule_create(*, cron: str | None = None, timezone_name: str | None = None):
    """Create or update the nightly PeriodicTask. Returns (task, created). Idempotent."""
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    minute, hour, day_of_month, month_of_year, day_of_week = (cron or settings.VOYAGER_TRAINING_CRON).split()
    schedule, _ = CrontabSchedule.objects.get_or_create(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
        timezone=timezone_name or settings.CELERY_TIMEZONE,
    )
    task, created = PeriodicTask.objects.update_or_create(
        name=NIGHTLY_TASK_NAME,
        defaults={
            "task": "training_tasks.nightly_training",
            "crontab": schedule,
            "interval": None,
            "kwargs": json.dumps({}),
            "enabled": True,
            "description": "One training run per persona with enough new ratings (training_tasks.nightly_training).",
        },
    )
    return task, created


CANARY_TASK_NAME = "voyager: canary review"


@transaction.atomic
def canary_schedule_create(*, minutes: int = 10):
    """Create or update the PeriodicTask that reviews every canary's trial. Returns (task, created)."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every, _ = IntervalSchedule.objects.get_or_create(every=minutes, period=IntervalSchedule.MINUTES)
    return PeriodicTask.objects.update_or_create(
        name=CANARY_TASK_NAME,
        defaults={
            "task": "training_tasks.canary_review",
            "interval": every,
            "crontab": None,
            "kwargs": json.dumps({}),
            "enabled": True,
            "description": "Promote or withdraw canary versions whose trial is decided (agents_app.canary).",
        },
    )
