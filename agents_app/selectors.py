"""Reads of the game-facing domain that more than one place needs."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Q
from django.db.models.functions import TruncDate
from django.utils import timezone

from agents_app.models import PolicyFlag


def flag_counts(*, days: int = 14) -> dict:
    """Policy flags per persona and adapter version, day by day over the last ``days`` days.

    Returns ``{"days": [date...], "rows": [{"persona", "adapter", "per_day": [n...], "total", "open",
    "by_rule": {rule: n}}...]}``, the busiest row first.
    """
    today = timezone.now().date()
    first = today - timedelta(days=days - 1)
    dates = [first + timedelta(days=i) for i in range(days)]
    flags = PolicyFlag.objects.filter(created_at__date__gte=first)
    per_day = (
        flags.annotate(day=TruncDate("created_at"))
        .values("exchange__persona__slug", "exchange__adapter_version__version", "day", "status", "rule")
        .annotate(n=Count("id"))
        .order_by()
    )
    rows: dict[tuple, dict] = {}
    for item in per_day:
        key = (item["exchange__persona__slug"], item["exchange__adapter_version__version"])
        row = rows.setdefault(
            key,
            {
                "persona": key[0],
                "adapter": f"v{key[1]}" if key[1] is not None else "base model",
                "per_day": dict.fromkeys(dates, 0),
                "total": 0,
                "open": 0,
                "by_rule": {},
            },
        )
        if item["day"] in row["per_day"]:
            row["per_day"][item["day"]] += item["n"]
        row["total"] += item["n"]
        if item["status"] == PolicyFlag.Status.OPEN:
            row["open"] += item["n"]
        row["by_rule"][item["rule"]] = row["by_rule"].get(item["rule"], 0) + item["n"]
    ordered = sorted(rows.values(), key=lambda r: (-r["total"], r["persona"], r["adapter"]))
    for row in ordered:
        row["per_day"] = [row["per_day"][d] for d in dates]
        row["by_rule"] = sorted(row["by_rule"].items(), key=lambda kv: -kv[1])
    return {"days": dates, "rows": ordered, "period_days": days}


def next_open_flag(*, after: PolicyFlag | None = None) -> PolicyFlag | None:
    """The queue's next open flag, oldest first: the one after ``after`` in that order, wrapping around so a
    skipped flag comes back once the rest are done; None when no open flag is left."""
    open_flags = PolicyFlag.objects.filter(status=PolicyFlag.Status.OPEN).order_by("created_at", "pk")
    if after is None:
        return open_flags.first()
    later = Q(created_at__gt=after.created_at) | Q(created_at=after.created_at, pk__gt=after.pk)
    return open_flags.filter(later).first() or open_flags.exclude(pk=after.pk).first()
