"""What a moderator does with the policy-audit queue. The admin's bulk actions call these.

Each returns the objects it changed, so the caller can write one admin-log entry per object.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agents_app.models import Correction, Exchange, Npc, PolicyFlag, RaterBlock

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
def corrections_exclude(*, correction_ids, excluded: bool) -> list[Correction]:
    """Keep corrections out of training (``excluded``) or let them back in; returns those changed."""
    changed = list(
        Correction.objects.select_for_update()
        .filter(pk__in=list(correction_ids))
        .exclude(excluded_from_training=excluded)
        .order_by("pk")
    )
    Correction.objects.filter(pk__in=[c.pk for c in changed]).update(excluded_from_training=excluded)
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
def raters_block(*, ratings, created_by, reason: str = "") -> list[RaterBlock]:
    """Mark the raters of ``ratings`` (ratings or corrections: anything with ``user_id`` and
    ``player_name``) as spammers. Returns the new blocks (a blocked rater stays as it was)."""
    users = sorted({r.user_id for r in ratings if r.user_id})
    names = sorted({r.player_name for r in ratings if not r.user_id and r.player_name})
    defaults = {"reason": reason[:500], "created_by": created_by}
    made = [RaterBlock.objects.get_or_create(user_id=user_id, defaults=defaults) for user_id in users]
    made += [RaterBlock.objects.get_or_create(user=None, player_name=name, defaults=defaults) for name in names]
    return [block for block, created in made if created]


@transaction.atomic
def raters_unblock(*, ratings) -> list[RaterBlock]:
    """Lift the blocks on the raters of ``ratings``. Returns the blocks removed."""
    users = {r.user_id for r in ratings if r.user_id}
    names = {r.player_name for r in ratings if not r.user_id and r.player_name}
    blocks = list(
        RaterBlock.objects.filter(Q(user_id__in=users) | Q(user__isnull=True, player_name__in=names)).order_by("pk")
    )
    RaterBlock.objects.filter(pk__in=[b.pk for b in blocks]).delete()
    return blocks


@transaction.atomic
def moderator_grant(*, user):
    """Put a user in the moderator group (created if missing) and let them into the admin."""
    from django.contrib.auth.models import Group

    from agents_app.roles import MODERATOR, ensure_roles

    ensure_roles()
    user.groups.add(Group.objects.get_or_create(name=MODERATOR)[0])
    if not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    return user
