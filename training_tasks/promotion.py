"""Put a trained adapter on disk for good and make it a version, atomically.

Files first: the trainer writes into ``MEDIA_ROOT/adapters/<persona>/.tmp-<label>-*``
(a sibling of the final directory, so the rename stays on one filesystem);
every file and the directory are fsynced, then renamed to ``train-<label>-v<n>``.
The label is ``run<id>`` for a nightly run and ``domain`` for the domain adapter
a persona starts with (``domain_adapter_install``).
The database second: one transaction creates the AdapterVersion (validated,
then active or approved), retires the previous active version and points
``Persona.active_adapter`` at the new one. A crash before the commit leaves the
active version as it was; the leftovers (``.tmp-*`` directories and final
directories no version points to) are removed by the persona's next run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from agents_app.models import AdapterVersion, Persona, TrainingRun
from inference.lora import CONFIG_FILE, WEIGHTS_FILE, file_sha256, read_adapter_config

log = logging.getLogger("voyager.training")

TEMP_PREFIX = ".tmp-"
FINAL_PREFIX = "train-"
DOMAIN_LABEL = "domain"


def persona_adapters_dir(persona: Persona) -> Path:
    return Path(settings.MEDIA_ROOT) / "adapters" / persona.slug


def run_label(run: TrainingRun) -> str:
    return f"run{run.pk}"


def temp_dir_create(persona: Persona, label: str) -> Path:
    root = persona_adapters_dir(persona)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{TEMP_PREFIX}{label}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def stale_files_clean(persona: Persona) -> list[str]:
    """Remove what dead runs left behind. Call only while holding the persona's training lock."""
    root = persona_adapters_dir(persona)
    if not root.is_dir():
        return []
    referenced = {
        Path(p).name for p in AdapterVersion.objects.filter(persona=persona).values_list("files_path", flat=True)
    }
    removed = []
    for child in root.iterdir():
        orphan_final = child.name.startswith(FINAL_PREFIX) and child.name not in referenced
        if child.name.startswith(TEMP_PREFIX) or orphan_final:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child.name)
    return removed


def fsync_tree(path: Path) -> None:
    for child in sorted(path.rglob("*")):
        if child.is_file():
            with child.open("rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def adapter_promote(
    *,
    run: TrainingRun | None,
    temp_dir: Path,
    base_model_id: str,
    metrics: dict,
    model_card: str = "",
    auto_promote: bool | None = None,
    persona: Persona | None = None,
) -> AdapterVersion:
    """Temp dir → final dir → AdapterVersion, in one transaction with the status switch.

    ``run`` is the nightly run that trained it; without one (the domain adapter), ``persona``.
    """
    persona_id = run.persona_id if run is not None else persona.pk
    label = run_label(run) if run is not None else DOMAIN_LABEL
    auto = settings.VOYAGER_AUTO_PROMOTE if auto_promote is None else auto_promote
    config = read_adapter_config(temp_dir)
    weights = temp_dir / WEIGHTS_FILE
    if not weights.is_file() or not (temp_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{temp_dir} is not a complete PEFT adapter directory")
    for extra in temp_dir.iterdir():  # only what the loader reads goes live
        if extra.name not in (CONFIG_FILE, WEIGHTS_FILE, "README.md"):
            shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
    fsync_tree(temp_dir)
    sha = file_sha256(weights)
    size = sum(p.stat().st_size for p in temp_dir.iterdir() if p.is_file())
    final: Path | None = None
    try:
        with transaction.atomic():
            persona = Persona.objects.select_for_update().get(pk=persona_id)
            version = (AdapterVersion.objects.filter(persona=persona).aggregate(m=Max("version"))["m"] or 0) + 1
            final = temp_dir.parent / f"{FINAL_PREFIX}{label}-v{version}"
            if final.exists():  # an orphan of a crash between rename and commit
                shutil.rmtree(final)
            temp_dir.rename(final)
            _fsync_dir(final.parent)
            now = timezone.now()
            adapter = AdapterVersion.objects.create(
                persona=persona,
                version=version,
                files_path=str(final.relative_to(Path(settings.MEDIA_ROOT))),
                sha256=sha,
                base_model_id=base_model_id[:200],
                rank=int(config.get("r", 8)),
                target_modules=sorted(config.get("target_modules") or []),
                size_bytes=size,
                status=AdapterVersion.Status.VALIDATED,
                source=AdapterVersion.Source.TRAINING,
                model_card=model_card,
                metrics=metrics,
                status_changed_at=now,
            )
            if auto:
                AdapterVersion.objects.filter(persona=persona, status=AdapterVersion.Status.ACTIVE).update(
                    status=AdapterVersion.Status.RETIRED, status_changed_at=now
                )
                adapter.status = AdapterVersion.Status.ACTIVE
                adapter.save(update_fields=["status"])
                persona.active_adapter = adapter
                persona.save(update_fields=["active_adapter", "updated_at"])
                transaction.on_commit(lambda: workers_warm(adapter))
            else:
                adapter.status = AdapterVersion.Status.APPROVED
                adapter.save(update_fields=["status"])
            if run is not None:
                run.produced_version = adapter
                run.save(update_fields=["produced_version"])
    except BaseException:
        if final is not None and final.exists() and not temp_dir.exists():
            final.rename(temp_dir)  # back to a temp name: the next run cleans it up
        raise
    return adapter


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


def domain_adapter_install(*, persona: Persona, adapter_dir: Path, base_model_id: str) -> AdapterVersion:
    """Make a trained domain adapter (``training_tasks.domain``) the persona's active version.

    Idempotent: a persona that already has a version with these weights gets that version back.
    The files are copied, so the cache the adapter came from can be cleared at any time.
    """
    adapter_dir = Path(adapter_dir)
    sha = file_sha256(adapter_dir / WEIGHTS_FILE)
    existing = AdapterVersion.objects.filter(persona=persona, sha256=sha).order_by("-version").first()
    if existing is not None:
        return existing
    marker = adapter_dir / "voyager-adapter.json"
    metrics = {"domain": json.loads(marker.read_text(encoding="utf-8"))} if marker.is_file() else {}
    temp = temp_dir_create(persona, DOMAIN_LABEL)
    try:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copy2(adapter_dir / name, temp / name)
        return adapter_promote(
            run=None,
            persona=persona,
            temp_dir=temp,
            base_model_id=base_model_id,
            metrics=metrics,
            model_card=DOMAIN_MODEL_CARD,
            auto_promote=True,
        )
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


DOMAIN_MODEL_CARD = (
    "The world adapter: trained with supervised fine-tuning on the platform's NPC corpus "
    "(short in-character replies, the world's items, places and dangers, and `[[ACTION:...]]` "
    "markup where a player asks for an action). The nightly runs build on it."
)
