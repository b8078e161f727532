"""An adapter version's life, one service per transition.

    uploaded ──smoke passes──▶ validated ──moderator──▶ approved ──owner or moderator──▶ active ──▶ retired
        └──smoke fails──▶ rejected ◀──moderator──┘

(a nightly run's gated candidate goes from validated to active, to canary, or to approved for a
person to activate). A canary answers a share of live asks beside the active version until
``agents_app.canary`` concludes its trial: canary ──no worse──▶ active, canary ──clearly worse──▶
retired. A moderator's rollback makes an earlier validated version (retired or approved) active
again in one step, withdrawing any canary.
Everything that moves a version calls these: the portal's upload and review pages, the API,
the admin's bulk actions and the nightly promotion. Who may see a version is the caller's
lookup (``portal.access``); the role a transition needs and the state it starts from are
checked here, so no caller can skip either. At most one version per persona is active, and
the persona points at it; activating one retires the one before, in the same transaction,
and after the commit the workers are told to load it.

Files: a version's directory is ``MEDIA_ROOT/adapters/<persona>/<name>``, complete and
fsynced before ``version_create`` writes the row that points at it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from agents_app.models import AdapterVersion, Persona
from agents_app.roles import CAN_APPROVE
from agents_app.services import ServiceError

log = logging.getLogger("voyager.adapters")
Status = AdapterVersion.Status


class LifecycleError(ServiceError):
    """A transition the version's state or the user's role does not allow."""


class LifecycleDenied(LifecycleError):
    code = "forbidden"


# --- files -------------------------------------------------------------------------------------------


def persona_adapters_dir(persona: Persona) -> Path:
    return Path(settings.MEDIA_ROOT) / "adapters" / persona.slug


def fsync_tree(path: Path) -> None:
    for child in sorted(path.rglob("*")):
        if child.is_file():
            with child.open("rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- transitions -------------------------------------------------------------------------------------


def version_create(*, persona: Persona, staged: Path, final_path, status: str, **fields) -> AdapterVersion:
    """Number the persona's next version, move ``staged`` to its final directory, and write the row.

    ``final_path(version)`` names the directory (on the same filesystem as ``staged``); an orphan
    of that name, from a crash between a rename and its commit, is replaced. Runs in the caller's
    transaction when there is one, so the caller may do more before the commit; if the row cannot
    be written the files go back to ``staged``.
    """
    final: Path | None = None
    try:
        with transaction.atomic():
            persona = Persona.objects.select_for_update().get(pk=persona.pk)
            version = (AdapterVersion.objects.filter(persona=persona).aggregate(m=Max("version"))["m"] or 0) + 1
            final = Path(final_path(version))
            if final.exists():
                shutil.rmtree(final)
            staged.rename(final)
            fsync_dir(final.parent)
            return AdapterVersion.objects.create(
                persona=persona,
                version=version,
                files_path=str(final.relative_to(Path(settings.MEDIA_ROOT))),
                status=status,
                status_changed_at=timezone.now(),
                **fields,
            )
    except BaseException:
        if final is not None and final.exists() and not staged.exists():
            final.rename(staged)  # no row points at them: back where the caller cleans up
        raise


def version_validate(*, adapter_id: int) -> AdapterVersion:
    """Run the smoke generation on an uploaded version: validated, or rejected with its files removed.

    Idempotent: a version that is no longer ``uploaded`` is returned as it is, and two deliveries
    racing each other decide once (the second finds the status already moved). Faults of the
    adapter reject it; a base model that will not load raises (the server's fault: the task
    retries, the version stays uploaded).
    """
    from inference.smoke import SmokeFailed, smoke_generate

    adapter = AdapterVersion.objects.get(pk=adapter_id)
    if adapter.status != Status.UPLOADED:
        return adapter
    try:
        result = smoke_generate(settings.VOYAGER_BASE_MODEL, adapter.absolute_path, expected_sha256=adapter.sha256)
    except SmokeFailed as exc:
        return _validation_record(adapter_id, smoke=None, reason=str(exc))
    return _validation_record(adapter_id, smoke=result.to_dict())


def _validation_record(adapter_id: int, *, smoke: dict | None, reason: str = "") -> AdapterVersion:
    with transaction.atomic():
        adapter = AdapterVersion.objects.select_for_update().select_related("persona").get(pk=adapter_id)
        if adapter.status != Status.UPLOADED:
            return adapter
        adapter.status_changed_at = timezone.now()
        if smoke is not None:
            adapter.status = Status.VALIDATED
            adapter.metrics = {**(adapter.metrics or {}), "smoke": smoke}
            adapter.save(update_fields=["status", "metrics", "status_changed_at"])
            log.info("adapter %s v%s validated: %s", adapter.persona.slug, adapter.version, smoke)
        else:
            adapter.status = Status.REJECTED
            adapter.validation_error = (
                f"The smoke generation failed: {reason}. Fix the adapter and upload it as a new version."
            )
            adapter.save(update_fields=["status", "validation_error", "status_changed_at"])
            log.info("adapter %s v%s rejected: %s", adapter.persona.slug, adapter.version, reason)
            path = adapter.absolute_path
            # After the commit: the row says "rejected" before the files go, never the other way round.
            transaction.on_commit(lambda: shutil.rmtree(path, ignore_errors=True))
    return adapter


@transaction.atomic
def version_review(*, user, adapter: AdapterVersion, decision: str) -> AdapterVersion:
    """A moderator approves or rejects a validated version (one that passed its smoke generation)."""
    if not (user.is_authenticated and user.has_perm(CAN_APPROVE)):
        raise LifecycleDenied("only moderators may approve or reject adapters")
    if decision not in ("approve", "reject"):
        raise LifecycleError(f"decision: must be approve or reject, not {decision!r}")
    adapter = AdapterVersion.objects.select_for_update().get(pk=adapter.pk)
    if adapter.status == Status.UPLOADED:
        raise LifecycleError(f"status: v{adapter.version} is still being validated; it can be reviewed once it passes")
    if adapter.status != Status.VALIDATED:
        raise LifecycleError(f"status: v{adapter.version} is {adapter.status}; only validated versions can be reviewed")
    adapter.status = Status.APPROVED if decision == "approve" else Status.REJECTED
    adapter.status_changed_at = timezone.now()
    adapter.save(update_fields=["status", "status_changed_at"])
    return adapter


@transaction.atomic
def version_activate(*, user, adapter: AdapterVersion) -> AdapterVersion:
    """Make an approved version the one that answers (its owner or a moderator); the old one retires."""
    persona = Persona.objects.select_for_update().get(pk=adapter.persona_id)
    if persona.owner_id != user.pk and not (user.is_authenticated and user.has_perm(CAN_APPROVE)):
        raise LifecycleDenied("only the persona's owner or a moderator may activate a version")
    adapter = AdapterVersion.objects.select_for_update().get(pk=adapter.pk)
    if adapter.status != Status.APPROVED:
        raise LifecycleError(f"status: v{adapter.version} is {adapter.status}; a moderator must approve it first")
    return _activate(persona, adapter)


@transaction.atomic
def version_promote(*, adapter: AdapterVersion, activate: bool, canary: bool = False) -> AdapterVersion:
    """The nightly run's gated candidate (validated): active at once, on trial as the canary
    (``canary``: it answers the persona's ``canary_percent`` of live asks), or approved for a person
    to activate. A canary already on trial is withdrawn: the newer candidate takes its place."""
    if adapter.status != Status.VALIDATED:
        raise LifecycleError(f"status: v{adapter.version} is {adapter.status}; only a validated version is promoted")
    persona = Persona.objects.select_for_update().get(pk=adapter.persona_id)
    if activate and canary:
        _withdraw_canary(persona)
        adapter.status, adapter.status_changed_at = Status.CANARY, timezone.now()
        adapter.save(update_fields=["status", "status_changed_at"])
        persona.canary_adapter = adapter
        persona.save(update_fields=["canary_adapter", "updated_at"])
        transaction.on_commit(lambda: workers_warm(adapter))
        return adapter
    if activate:
        return _activate(persona, adapter)
    adapter.status, adapter.status_changed_at = Status.APPROVED, timezone.now()
    adapter.save(update_fields=["status", "status_changed_at"])
    return adapter


CANARY_DECISIONS = ("promote", "withdraw")


@transaction.atomic
def canary_conclude(*, adapter: AdapterVersion, decision: str, figures: dict) -> AdapterVersion:
    """End a canary's trial: ``promote`` makes it active, ``withdraw`` retires it. ``figures`` (what
    the decision rests on) go into its metrics as ``canary``. A version no longer on trial is left alone."""
    if decision not in CANARY_DECISIONS:
        raise LifecycleError(f"decision: must be promote or withdraw, not {decision!r}")
    persona = Persona.objects.select_for_update().get(pk=adapter.persona_id)
    adapter = AdapterVersion.objects.select_for_update().get(pk=adapter.pk)
    if adapter.status != Status.CANARY:
        raise LifecycleError(f"status: v{adapter.version} is {adapter.status}; only a canary's trial can end")
    adapter.metrics = {**(adapter.metrics or {}), "canary": {**figures, "decision": decision}}
    adapter.save(update_fields=["metrics"])
    if decision == "promote":
        return _activate(persona, adapter)
    _withdraw_canary(persona)
    adapter.refresh_from_db()
    return adapter


def rollback_candidates(persona: Persona):
    """The versions a moderator may roll back to: earlier ones that passed validation, not rejected."""
    passed = Q(source=AdapterVersion.Source.TRAINING) | Q(metrics__has_key="smoke")
    return AdapterVersion.objects.filter(passed, persona=persona, status__in=[Status.RETIRED, Status.APPROVED])


@transaction.atomic
def version_rollback(*, user, adapter: AdapterVersion) -> AdapterVersion:
    """A moderator makes an earlier validated version active again, in one step: the active version
    retires and a canary on trial is withdrawn."""
    if not (user.is_authenticated and user.has_perm(CAN_APPROVE)):
        raise LifecycleDenied("only moderators may roll a persona back")
    persona = Persona.objects.select_for_update().get(pk=adapter.persona_id)
    adapter = AdapterVersion.objects.select_for_update().get(pk=adapter.pk)
    if not rollback_candidates(persona).filter(pk=adapter.pk).exists():
        raise LifecycleError(
            f"status: v{adapter.version} is {adapter.status}; only an earlier version that passed validation "
            "(retired or approved) can be rolled back to"
        )
    _withdraw_canary(persona)
    return _activate(persona, adapter)


def _withdraw_canary(persona: Persona) -> None:
    """Retire the persona's canary, if it has one: its share of asks goes back to the active version."""
    AdapterVersion.objects.filter(persona=persona, status=Status.CANARY).update(
        status=Status.RETIRED, status_changed_at=timezone.now()
    )
    if persona.canary_adapter_id is not None:
        persona.canary_adapter = None
        persona.save(update_fields=["canary_adapter", "updated_at"])


def _activate(persona: Persona, adapter: AdapterVersion) -> AdapterVersion:
    now = timezone.now()
    AdapterVersion.objects.filter(persona=persona, status=Status.ACTIVE).update(
        status=Status.RETIRED, status_changed_at=now
    )
    adapter.status, adapter.status_changed_at = Status.ACTIVE, now
    adapter.save(update_fields=["status", "status_changed_at"])
    persona.active_adapter = adapter
    fields = ["active_adapter", "updated_at"]
    if persona.canary_adapter_id == adapter.pk:
        persona.canary_adapter = None
        fields.append("canary_adapter")
    persona.save(update_fields=fields)
    transaction.on_commit(lambda: workers_warm(adapter))
    return adapter


@transaction.atomic
def versions_retire(*, adapter_ids) -> list[AdapterVersion]:
    """Retire adapter versions; a persona whose active version goes falls back to the base model."""
    adapters = list(
        AdapterVersion.objects.select_for_update()
        .filter(pk__in=list(adapter_ids))
        .exclude(status=Status.RETIRED)
        .order_by("pk")
    )
    now = timezone.now()
    Persona.objects.filter(active_adapter__in=adapters).update(active_adapter=None)
    Persona.objects.filter(canary_adapter__in=adapters).update(canary_adapter=None)
    for adapter in adapters:
        adapter.status, adapter.status_changed_at = Status.RETIRED, now
    AdapterVersion.objects.bulk_update(adapters, ["status", "status_changed_at"])
    return adapters


def workers_warm(adapter: AdapterVersion) -> None:
    """Tell every inference worker to load the new version before its first request."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from agents_app.gateway import adapter_ref
    from inference.worker import WORKERS_GROUP

    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(
            WORKERS_GROUP, {"type": "inference.adapter_activated", "adapter": adapter_ref(adapter)}
        )
    except Exception:  # warming is an optimisation: the first request loads it anyway
        log.exception("could not tell the workers to warm %s", adapter)
