"""Portal people: alice (modder) owns the persona, bob (modder) shares her role, charlie is only a player."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import Group


@pytest.fixture(autouse=True)
def _empty_cache():
    """Throttles (and whatever else a view caches) start empty in each test."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


def _join(user, *roles):
    user.groups.add(*Group.objects.filter(name__in=roles))
    return user


@pytest.fixture
def alice(alice):
    return _join(alice, "player", "modder")


@pytest.fixture
def bob(bob):
    return _join(bob, "player", "modder")


@pytest.fixture
def charlie(charlie):
    return _join(charlie, "player")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny starter model (seconds to build): a real base model for the smoke generation."""
    from inference.starter import build_starter_model

    return build_starter_model(tmp_path_factory.mktemp("models") / "tiny", size="tiny", seed=0, log=lambda _m: None)


@pytest.fixture
def base_model(settings, tmp_path, tiny_model):
    root = tmp_path / "base"
    shutil.copytree(tiny_model, root)
    (root / "voyager.json").write_text(json.dumps({"model_id": "tiny-test"}))
    settings.VOYAGER_BASE_MODEL = str(root)
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return root
