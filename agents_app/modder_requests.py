"""The modder role on request: a player asks from the profile, a moderator approves or refuses in the admin.

This module owns the request's transitions (pending → approved | refused); the portal and the admin call it.
"""

from __future__ import annotations

from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents_app.models import ModderRequest
from agents_app.roles import CAN_UPLOAD, MODDER, ensure_roles
from agents_app.services import ServiceError

MAX_MOTIVATION = 1000


def modder_request_latest(*, user) -> ModderRequest | None:
    return ModderRequest.objects.filter(user=user).order_by("-created_at", "-pk").first()


@transaction.atomic
def modder_request_create(*, user, motivation: str) -> ModderRequest:
    """A new pending request; refused while one is pending or when the user already has the role."""
    motivation = (motivation or "").strip()
    if user.has_perm(CAN_UPLOAD):
        raise ServiceError("role: you already have the modder role")
    if not motivation:
        raise ServiceError("motivation: say in a sentence or two what you mean to build")
    if len(motivation) > MAX_MOTIVATION:
        raise ServiceError(f"motivation: at most {MAX_MOTIVATION} characters, not {len(motivation)}")
    try:
        with transaction.atomic():  # the partial unique constraint stops a second pending request
            return ModderRequest.objects.create(user=user, motivation=motivation)
    except IntegrityError:
        raise ServiceError("role: your request is already waiting for a moderator") from None


@transaction.atomic
def modder_requests_decide(*, requests, moderator, approve: bool, note: str = "") -> list[ModderRequest]:
    """Approve (the user joins the modder group) or refuse pending requests; decided ones are left alone."""
    changed = list(
        ModderRequest.objects.select_for_update()
        .filter(pk__in=[r.pk for r in requests], status=ModderRequest.Status.PENDING)
        .select_related("user")
    )
    if approve and changed:
        ensure_roles()
        group = Group.objects.get(name=MODDER)
    now = timezone.now()
    for request in changed:
        request.status = ModderRequest.Status.APPROVED if approve else ModderRequest.Status.REFUSED
        request.decided_by, request.decided_at = moderator, now
        if note:
            request.note = note[:1000]
        if approve:
            request.user.groups.add(group)
    ModderRequest.objects.bulk_update(changed, ["status", "decided_by", "decided_at", "note"])
    return changed
