"""Put a trained adapter on disk for good and make it a version, atomically.

Files first: the trainer writes into ``MEDIA_ROOT/adapters/<persona>/.tmp-<label>-*``
(a sibling of the final directory, so the rename stays on one filesystem);
every file and the directory are fsynced, then renamed to ``train-<label>-v<n>``.
The label is ``run<id>`` for a nightly run and ``domain`` for the domain adapter
a persona starts with (``domain_adapter_install``).
The database second: one transaction creates the AdapterVersion (validated)
and promotes it (``agents_app.adapters``: active, retiring the version before,
or approved for a person to activate). A crash before the commit leaves the
active version as it was; the leftovers (``.tmp-*`` directories and final
directories no version points to) are removed by the persona's next run.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.db import transaction

from agents_app import adapters as lifecycle
from agents_app.models import AdapterVersion, Persona, TrainingRun
from inference.lora import CONFIG_FILE, WEIGHTS_FILE, file_sha256, read_adapter_config

log = logging.getLogger("voyager.training")

TEMP_PREFIX = ".tmp-"
FINAL_PREFIX = "train-"
DOMAIN_LABEL = "domain"


def run_label(run: TrainingRun) -> str:
    return f"run{run.pk}"


def temp_dir_create(persona: Persona, label: str) -> Path:
    root = lifecycle.persona_adapters_dir(persona)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{TEMP_PREFIX}{label}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def stale_files_clean(persona: Persona) -> list[str]:
    """Remove what dead runs left behind. Call only while holding the persona's training lock."""
    root = lifecycle.persona_adapters_dir(persona)
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


def adapter_promote(
    *,
    run: TrainingRun | None,
    temp_dir: Path,
    base_model_id: str,
    metrics: dict,
    model_card: str = "",
    auto_promote: bool | None = None,
    persona: Persona | None = None,
    canary: bool | None = None,
) -> AdapterVersion:
    """Temp dir → final dir → AdapterVersion, in one transaction with the status switch.

    ``run`` is the nightly run that trained it; without one (the domain adapter), ``persona``.
    An auto-promoted version goes on trial as the canary (``VOYAGER_CANARY``, and the persona's
    ``canary_percent`` above 0) unless ``canary`` says otherwise.
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
    lifecycle.fsync_tree(temp_dir)
    adapter: AdapterVersion | None = None
    try:
        with transaction.atomic():
            adapter = lifecycle.version_create(
                persona=Persona.objects.get(pk=persona_id),
                staged=temp_dir,
                final_path=lambda version: temp_dir.parent / f"{FINAL_PREFIX}{label}-v{version}",
                status=AdapterVersion.Status.VALIDATED,
                sha256=file_sha256(weights),
                base_model_id=base_model_id[:200],
                rank=int(config.get("r", 8)),
                target_modules=sorted(config.get("target_modules") or []),
                size_bytes=sum(p.stat().st_size for p in temp_dir.iterdir() if p.is_file()),
                source=AdapterVersion.Source.TRAINING,
                model_card=model_card,
                metrics=metrics,
            )
            owner = Persona.objects.get(pk=persona_id)
            on_trial = settings.VOYAGER_CANARY and owner.canary_percent > 0 if canary is None else canary
            lifecycle.version_promote(adapter=adapter, activate=auto, canary=on_trial)
            if run is not None:
                run.produced_version = adapter
                run.save(update_fields=["produced_version"])
    except BaseException:
        final = adapter.absolute_path if adapter is not None else None
        if final is not None and final.exists() and not temp_dir.exists():
            final.rename(temp_dir)  # back to a temp name: the next run cleans it up
        raise
    return adapter


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
            canary=False,  # the world adapter is where a persona starts: nothing to try it against
        )
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


DOMAIN_MODEL_CARD = (
    "The world adapter: trained with supervised fine-tuning on the platform's NPC corpus "
    "(short in-character replies, the world's items, places and dangers, and `[[ACTION:...]]` "
    "markup where a player asks for an action). The nightly runs build on it."
)
