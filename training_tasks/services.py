"""The nightly RLHF pipeline as plain functions; Celery tasks and commands call these.

``nightly_training_enqueue`` makes one TrainingRun per persona with enough
new ratings (unique per persona and night, so a second nightly run adds
nothing) and hands each run's pk to ``enqueue``. ``training_run_execute``
carries one run through: lock the persona, clean what dead runs left,
snapshot the dataset, train, gate, promote, and record every step on the
TrainingRun row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from agents_app import policy
from agents_app.adapters import persona_adapters_dir
from agents_app.models import AdapterVersion, Persona, TrainingRun
from training_tasks import dataset, gate, probes, promotion
from training_tasks.trainers import TrainConfig, train_adapter

log = logging.getLogger("voyager.training")

TERMINAL = {
    TrainingRun.Status.SUCCEEDED,
    TrainingRun.Status.GATE_REJECTED,
    TrainingRun.Status.SKIPPED,
    TrainingRun.Status.FAILED,
}
# pg advisory lock namespace ("VOYT"); the second key is the persona id.
LOCK_NAMESPACE = 0x564F5954 & 0x7FFFFFFF


def _transient_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OperationalError, InterfaceError, ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):
        import redis.exceptions

        errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    with contextlib.suppress(ImportError):
        import kombu.exceptions

        errors.append(kombu.exceptions.OperationalError)
    return tuple(errors)


TRANSIENT_ERRORS = _transient_errors()


class PersonaBusy(Exception):
    """Another run holds this persona's training lock; try again later."""


_local_locks: dict[int, threading.Lock] = {}
_local_guard = threading.Lock()


@contextlib.contextmanager
def persona_training_lock(persona_id: int) -> Iterator[bool]:
    """One run per persona at a time. Yields whether the lock was taken (never waits).

    On PostgreSQL a session advisory lock: it dies with the worker's connection,
    so a killed worker never leaves a stale lock behind. SQLite is the embedded,
    single-process topology, where a process-local lock is enough.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [LOCK_NAMESPACE, persona_id])
            got = bool(cursor.fetchone()[0])
        try:
            yield got
        finally:
            if got:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_NAMESPACE, persona_id])
        return
    with _local_guard:
        lock = _local_locks.setdefault(persona_id, threading.Lock())
    got = lock.acquire(blocking=False)
    try:
        yield got
    finally:
        if got:
            lock.release()


# ---- nightly fan-out ---------------------------------------------------------------------------


def new_ratings_count(persona: Persona) -> int:
    """Eligible ratings, corrections and pairwise votes given or changed since the persona's last run
    that used its data."""
    last = (
        TrainingRun.objects.filter(
            persona=persona, status__in=[TrainingRun.Status.SUCCEEDED, TrainingRun.Status.GATE_REJECTED]
        )
        .order_by("-started_at")
        .values_list("started_at", flat=True)
        .first()
    )
    ratings = dataset.eligible_ratings(persona)
    corrections = dataset.eligible_corrections(persona)
    votes = dataset.eligible_pairwise_votes(persona)
    if last is not None:
        ratings = ratings.filter(updated_at__gt=last)
        corrections = corrections.filter(updated_at__gt=last)
        votes = votes.filter(created_at__gt=last)
    # Corrections and battle votes are feedback too: a persona taught only by them still trains.
    return ratings.count() + corrections.count() + votes.count()


def nightly_training_enqueue(
    *, enqueue: Callable[[int], Any], night: date | None = None, min_new_ratings: int | None = None
) -> list[int]:
    """Create tonight's runs and enqueue them; returns the pks enqueued. Safe to call twice."""
    night = night or timezone.localdate()
    minimum = min_new_ratings or settings.VOYAGER_TRAINING_MIN_NEW_RATINGS
    enqueued = []
    for persona in Persona.objects.order_by("pk"):
        existing = TrainingRun.objects.filter(persona=persona, night=night).first()
        if existing is None:
            count = new_ratings_count(persona)
            if count < minimum:
                continue
            with transaction.atomic():
                existing, _ = TrainingRun.objects.get_or_create(
                    persona=persona, night=night, defaults={"data_counts": {"new_ratings": count}}
                )
        if existing.status == TrainingRun.Status.QUEUED:
            with transaction.atomic():
                enqueue(existing.pk)  # delay_on_commit: sent once the row is surely there
            enqueued.append(existing.pk)
    return enqueued


# ---- one run -------------------------------------------------------------------------------------


class RunLog:
    """Appends timestamped lines to TrainingRun.log (saved as it goes, for the admin to follow)."""

    def __init__(self, run: TrainingRun) -> None:
        self.run = run

    def __call__(self, message: str) -> None:
        line = f"{timezone.now():%Y-%m-%d %H:%M:%S} {message}"
        log.info("run %s: %s", self.run.pk, message)
        self.run.log = (self.run.log + "\n" + line).lstrip("\n")
        TrainingRun.objects.filter(pk=self.run.pk).update(log=self.run.log)

    def stage(self, name: str, percent: float) -> None:
        """Where the run is now (saved only when the whole percent changes: training calls it every step)."""
        percent = max(0, min(100, int(percent)))
        if (name, percent) == (self.run.stage, self.run.progress):
            return
        self.run.stage, self.run.progress = name, percent
        TrainingRun.objects.filter(pk=self.run.pk).update(stage=name, progress=percent)


# The share of a run each stage starts at; training fills the span up to the candidate's evaluation.
PROGRESS = {"dataset": 0, "reward model": 5, "evaluating the active version": 10, "training": 25}
PROGRESS.update({"evaluating the candidate": 85, "promoting": 95})


def train_config() -> TrainConfig:
    """TrainConfig's defaults, with whichever of its fields ``VOYAGER_TRAINING`` names."""
    knobs = settings.VOYAGER_TRAINING
    return replace(TrainConfig(), **{f.name: knobs[f.name] for f in fields(TrainConfig) if f.name in knobs})


def gate_config() -> gate.GateConfig:
    """GateConfig's defaults, with whichever of its fields ``VOYAGER_TRAINING`` names as ``gate_<field>``."""
    knobs = settings.VOYAGER_TRAINING
    names = [f.name for f in fields(gate.GateConfig)]
    try:
        return replace(gate.GateConfig(), **{n: knobs[f"gate_{n}"] for n in names if f"gate_{n}" in knobs})
    except ValueError as exc:
        raise ImproperlyConfigured(f"VOYAGER_TRAINING: {exc}") from exc


def base_model_id() -> str:
    from inference.service import base_model_id as model_id
    from inference.starter import MARKER_FILE

    path = Path(settings.VOYAGER_BASE_MODEL).resolve()
    marker = path / MARKER_FILE
    meta = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None
    return model_id(SimpleNamespace(info=SimpleNamespace(voyager=meta, path=str(path))))


def persona_spec(persona: Persona):
    from inference.prompt import PersonaSpec, Sampling

    return PersonaSpec(
        slug=persona.slug,
        name=persona.name,
        system_prompt=persona.system_prompt,
        traits=tuple(persona.traits or ()),
        actions=tuple(persona.allowed_actions or ()),
        sampling=Sampling(
            temperature=persona.temperature, top_p=persona.top_p, repetition_penalty=persona.repetition_penalty
        ),
    )


def _finish(run: TrainingRun, status: str, **fields: Any) -> None:
    run.status = status
    run.stage, run.progress = "", 100
    run.finished_at = timezone.now()
    for key, value in fields.items():
        setattr(run, key, value)
    run.save()


def training_run_execute(*, run_id: int) -> TrainingRun:
    """Carry one run to a terminal status. Raises PersonaBusy or a transient error to be retried."""
    run = TrainingRun.objects.select_related("persona").get(pk=run_id)
    if run.status in TERMINAL:
        return run
    with persona_training_lock(run.persona_id) as got:
        if not got:
            raise PersonaBusy(f"another training run holds {run.persona.slug}'s lock")
        run.refresh_from_db()
        if run.status in TERMINAL:
            return run
        note = RunLog(run)
        if run.status == TrainingRun.Status.RUNNING:
            note("the previous attempt died (its worker is gone): starting over")
        # Holding the lock, no other run of this persona is alive: any still "running" died with its worker.
        TrainingRun.objects.filter(persona_id=run.persona_id, status=TrainingRun.Status.RUNNING).exclude(
            pk=run.pk
        ).update(status=TrainingRun.Status.FAILED, error="its worker died mid-run", finished_at=timezone.now())
        removed = promotion.stale_files_clean(run.persona)
        if removed:
            note(f"removed leftovers of dead runs: {', '.join(removed)}")
        run.status, run.started_at, run.error = TrainingRun.Status.RUNNING, timezone.now(), ""
        run.stage, run.progress = "dataset", 0
        run.save(update_fields=["status", "started_at", "error", "stage", "progress"])
        try:
            _train_gate_promote(run, note)
        except TRANSIENT_ERRORS as exc:
            note(f"transient error, will retry: {type(exc).__name__}: {exc}")
            TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.QUEUED, stage="", progress=0)
            raise
        except BaseException as exc:  # SoftTimeLimitExceeded included: record it, keep the active version
            note(f"failed: {type(exc).__name__}: {exc}")
            _finish(run, TrainingRun.Status.FAILED, error=f"{type(exc).__name__}: {exc}"[:5000])
            if not isinstance(exc, Exception):
                raise
        finally:
            # Whatever happened, this run's temp files go (a promoted adapter was renamed away already).
            pattern = f"{promotion.TEMP_PREFIX}{promotion.run_label(run)}-*"
            for leftover in persona_adapters_dir(run.persona).glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True)
    return run


def _train_gate_promote(run: TrainingRun, note: RunLog) -> None:
    persona = Persona.objects.select_related("active_adapter").get(pk=run.persona_id)
    knobs = settings.VOYAGER_TRAINING
    config, gconfig = train_config(), gate_config()
    snapshot = dataset.dataset_build(
        persona=persona,
        heldout_fraction=knobs["heldout_fraction"],
        seed=run.pk,
        max_copies_per_reply=config.max_copies_per_reply,
    )
    run.rating_ids, run.pairwise_vote_ids = snapshot.rating_ids, snapshot.pairwise_vote_ids
    run.correction_ids = snapshot.correction_ids
    run.data_counts = {**run.data_counts, **snapshot.counts}
    run.save(update_fields=["rating_ids", "pairwise_vote_ids", "correction_ids", "data_counts"])
    note(f"dataset: {json.dumps(snapshot.counts)}")
    train = snapshot.train
    if len(train.sft) < config.sft_min_examples and len(train.dpo) < config.min_dpo_pairs:
        note("not enough liked replies or preference pairs to train on")
        _finish(run, TrainingRun.Status.SKIPPED)
        return

    model_id = base_model_id()
    active = persona.active_adapter
    if active is not None and (active.status != AdapterVersion.Status.ACTIVE or active.base_model_id != model_id):
        note(f"active adapter {active} is not for base model {model_id}: training a fresh one")
        active = None
    run.base_adapter = active
    run.save(update_fields=["base_adapter"])
    active_path = str(active.absolute_path) if active else None
    spec = persona_spec(persona)

    reward_model = None
    if gconfig.reward_model == "on":
        from training_tasks.reward import reward_heldout_metrics, train_reward_model

        note.stage("reward model", PROGRESS["reward model"])
        # Trained on the same split as the candidate; kept in memory until both sides are scored.
        reward_model = train_reward_model(base_model_path=settings.VOYAGER_BASE_MODEL, data=train, on_log=note)
        rm_figures = reward_heldout_metrics(reward_model, snapshot.heldout)
        note(f"reward model: {json.dumps(rm_figures)}")

    rules = policy.RuleSet.for_persona(persona)

    def check(text, actions):
        return policy.check_reply(persona, text, actions, rules=rules)

    probe_asks = probes.probe_set(persona.name)  # the same asks before and after: a rule ratings cannot fool
    note(f"evaluating the current {'adapter ' + str(active) if active else 'base model'}")
    note.stage("evaluating the active version", PROGRESS["evaluating the active version"])
    started = time.monotonic()
    before = gate.evaluate_adapter(
        base_model_path=settings.VOYAGER_BASE_MODEL,
        adapter_path=active_path,
        heldout=snapshot.heldout,
        persona_spec=spec,
        check=check,
        config=gconfig,
        reward_model=reward_model,
        probes=probe_asks,
    )
    run.metrics_before = before
    run.save(update_fields=["metrics_before"])

    temp = promotion.temp_dir_create(persona, promotion.run_label(run))
    note(f"training from {'v' + str(active.version) if active else 'a fresh LoRA'} with {config.to_dict()}")
    start, span = PROGRESS["training"], PROGRESS["evaluating the candidate"] - PROGRESS["training"]
    note.stage("training", start)
    result = train_adapter(
        base_model_path=settings.VOYAGER_BASE_MODEL,
        init_adapter=active_path,
        data=train,
        out_dir=temp,
        config=config,
        on_log=note,
        on_progress=lambda done: note.stage("training", start + span * done),
    )
    run.method, run.loss_curve = result.method, result.loss_curve
    run.save(update_fields=["method", "loss_curve"])
    note(f"trained ({' → '.join(result.stages)}) in {result.seconds:.1f}s")
    note.stage("evaluating the candidate", PROGRESS["evaluating the candidate"])

    after = gate.evaluate_adapter(
        base_model_path=settings.VOYAGER_BASE_MODEL,
        adapter_path=str(temp),
        heldout=snapshot.heldout,
        persona_spec=spec,
        check=check,
        config=gconfig,
        reference_path=active_path,
        reward_model=reward_model,
        probes=probe_asks,
    )
    del reward_model
    passed, reasons = gate.gate_decide(before, after, gconfig)
    after = {**after, "gate": {"passed": passed, "reasons": reasons}, "stages": result.stages}
    if gconfig.reward_model == "on":
        after["reward_model"] = rm_figures
    after["train_seconds"] = round(result.seconds, 2)
    after["pipeline_seconds"] = round(time.monotonic() - started, 2)
    run.metrics_after = after
    run.save(update_fields=["metrics_after"])
    if not passed:
        note("gate refused the candidate: " + "; ".join(reasons))
        _finish(run, TrainingRun.Status.GATE_REJECTED)
        return
    note.stage("promoting", PROGRESS["promoting"])
    card = (
        f"Trained by run {run.pk} ({run.night}) with {'+'.join(result.stages)} on "
        f"{len(snapshot.rating_ids)} ratings, from {'v' + str(active.version) if active else 'a fresh LoRA'}."
    )
    adapter = promotion.adapter_promote(
        run=run, temp_dir=temp, base_model_id=model_id, metrics={"before": before, "after": after}, model_card=card
    )
    note(f"promoted as v{adapter.version} ({adapter.status})")
    _finish(run, TrainingRun.Status.SUCCEEDED, produced_version=adapter)
