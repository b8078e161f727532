"""Portal people: alice (modder) owns the persona, bob (modder) shares her role, charlie is only a player."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from agents_app.models import Exchange, Npc, Persona, PlayerLink


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


def client_for(user=None) -> Client:
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    return client


def csrf_post(client: Client, path: str, data=None, **extra):
    """POST as a browser would: the CSRF token from the cookie, sent back in the form."""
    client.get("/accounts/login/")  # sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    return client.post(path, {**(data or {}), "csrfmiddlewaretoken": token}, **extra)


def csrf_json_post(client: Client, path: str, data=None):
    client.get("/accounts/login/")
    token = client.cookies["csrftoken"].value
    return client.post(
        path, {**(data or {}), "csrfmiddlewaretoken": token}, HTTP_ACCEPT="application/json", HTTP_X_CSRFTOKEN=token
    )


_clock = [0]


def make_exchange(npc, *, player="steve", text="where is iron?", reply="Down the east tunnel.", **extra):
    _clock[0] += 1
    return Exchange.objects.create(
        npc=npc,
        persona=extra.pop("persona", npc.persona),
        player_name=player,
        player_text=text,
        prompt="p",
        reply_text=reply,
        created_at=extra.pop("created_at", timezone.now() - timezone.timedelta(seconds=10_000 - _clock[0])),
        **extra,
    )


@pytest.fixture
def private_persona(alice):
    return Persona.objects.create(slug="secret", name="Secret Sam", owner=alice, is_public=False)


@pytest.fixture
def private_npc(game_server, private_persona):
    return Npc.objects.create(game_server=game_server, world_id="npc-secret", persona=private_persona)


def verified_link(user, player_name, *, public=False):
    return PlayerLink.objects.create(
        user=user, player_name=player_name, verified_at=timezone.now(), show_publicly=public
    )
