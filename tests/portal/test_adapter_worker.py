"""The smoke generation in a real `celery worker` process: Redis broker, PostgreSQL, the tiny model."""

from __future__ import annotations

import json
import shutil
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.test import override_settings

from agents_app.models import AdapterVersion
from portal import adapters, tasks
from tests.factories import config_json, nan_weights, weights
from tests.processes import Worker, needs_backends, wait_for


@pytest.fixture
def media(tmp_path, tiny_model):
    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    (base / "voyager.json").write_text(json.dumps({"model_id": "tiny-test"}))
    with override_settings(MEDIA_ROOT=str(tmp_path / "media"), VOYAGER_BASE_MODEL=str(base)):
        yield tmp_path / "media", base


@pytest.fixture
def worker(media, tmp_path):
    started = Worker(media[0], media[1], tmp_path / "worker.log")
    yield started
    started.kill()
    started.forget_queue()


def uploaded(user, worker: Worker, weights_bytes: bytes) -> AdapterVersion:
    """An upload whose smoke task goes, after the commit, to this test's worker queue."""

    def to_worker(pk):
        transaction.on_commit(lambda: worker.send(tasks.adapter_validate, pk))

    files = {
        "config": SimpleUploadedFile("adapter_config.json", config_json()),
        "weights": SimpleUploadedFile("adapter_model.safetensors", weights_bytes),
    }
    with mock.patch.object(tasks.adapter_validate, "delay_on_commit", to_worker):
        return adapters.adapter_upload(user=user, persona_slug="miner", files=files)


def decided(pk: int):
    adapter = AdapterVersion.objects.get(pk=pk)
    return adapter if adapter.status != AdapterVersion.Status.UPLOADED else None


@needs_backends
@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_worker_validates_a_fitting_adapter_and_rejects_a_nan_one(alice, persona, worker):
    from django.contrib.auth.models import Group

    alice.groups.add(*Group.objects.filter(name__in=["player", "modder"]))
    good = uploaded(alice, worker, weights())
    bad = uploaded(alice, worker, nan_weights())
    assert good.status == bad.status == "uploaded"  # not eager: the worker decides
    good = wait_for(lambda: decided(good.pk), worker, timeout=90, what="the smoke task")
    bad = wait_for(lambda: decided(bad.pk), worker, timeout=90, what="the smoke task")
    assert good.status == "validated" and good.metrics["smoke"]["tokens"] >= 2, worker.output()
    assert (good.absolute_path / "adapter_model.safetensors").is_file()
    assert bad.status == "rejected" and "non-finite values" in bad.validation_error
    assert not bad.absolute_path.exists()
