"""What a moderator does with the policy-audit queue. The admin's bulk actions call these.

Each returns the objects it changed, so the caller can write one admin-log entry per object.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from agents_app.models import AdapterVersion, Exchange, Npc, Persona, PolicyFlag

FOREVER_DAYS = 365 * 100


@transaction.atomic
def flags_review(*, flags, user, status: str) -> list[PolicyFlag]:
    """Confirm or dismiss flags (a flag already so is left alone)."""
    if status not in (PolicyFlag.Status.CONFIRMED, PolicyFlag.Status.DISMISSED):
        raise ValueError(f"status: {status!r} is not a review outcome")
    changed = list(PolicyFlag.objects.select_for_update().filter(pk__in=[f.pk for f in flags]).exclude(status=status))
    now = timezone.now()
    for flag in changed:
        flag.status, flag.reviewed_by, flag.reviewed_at = status, user, now
    PolicyFlag.objects.bulk_update(changed, ["status", "reviewed_by", "reviewed_at"])
    return changed


@transaction.atomic
def exchanges_exclude_from_training(*, exchange_ids) -> list[Exchange]:
    changed = list(
        Exchange.objects.select_for_update()
        .filter(pk__in=list(exchange_ids), excluded_from_training=False)
        .order_by("pk")
    )
    Exchange.objects.filter(pk__in=[e.pk for e in changed]).update(excluded_from_training=True)
    return changed


@transaction.atomic
def npcs_freeze(*, npc_ids, seconds: float | None = None) -> list[Npc]:
    """Freeze NPCs for ``seconds``, or until a moderator unfreezes them (None)."""
    until = timezone.now() + timezone.timedelta(days=FOREVER_DAYS if seconds is None else 0, seconds=seconds or 0)
    npcs = list(Npc.objects.select_for_update().filter(pk__in=list(npc_ids)).order_by("pk"))
    for npc in npcs:
        npc.frozen_until = until
    Npc.objects.bulk_update(npcs, ["frozen_until"])
    return npcs


@transaction.atomic
def npcs_unfreeze(*, npc_ids) -> list[Npc]:
    npcs = list(Npc.objects.select_for_update().filter(pk__in=list(npc_ids), frozen_until__isnull=False).order_by("pk"))
    Npc.objects.filter(pk__in=[n.pk for n in npcs]).update(frozen_until=None)
    return npcs


@transaction.atomic
def adapter_versions_retire(*, adapter_ids) -> list[AdapterVersion]:
    """Retire adapter versions; a persona whose active version goes falls back to the base model."""
    adapters = list(
        AdapterVersion.objects.select_for_update()
        .filter(pk__in=list(adapter_ids))
        .exclude(status=AdapterVersion.Status.RETIRED)
        .order_by("pk")
    )
    now = timezone.now()
    Persona.objects.filter(active_adapter__in=adapters).update(active_adapter=None)
    for adapter in adapters:
        adapter.status, adapter.status_changed_at = AdapterVersion.Status.RETIRED, now
    AdapterVersion.objects.bulk_update(adapters, ["status", "status_changed_at"])
    return adapters


@transaction.atomic
def moderator_grant(*, user):
    """Put a user in the moderator group (created if missing) and let them into the admin."""
    from django.contrib.auth.models import Group

    from portal.roles import MODERATOR, ensure_roles

    ensure_roles()
    user.groups.add(Group.objects.get_or_create(name=MODERATOR)[0])
    if not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    return user
