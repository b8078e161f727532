import pytest
from django.contrib.auth import get_user_model

from agents_app.models import GameServer, Npc, Persona


@pytest.fixture
def alice(db):
    """Alice owns things: personas, a game server."""
    return get_user_model().objects.create_user("alice", "alice@example.org", "alice-password-1")


@pytest.fixture
def bob(db):
    """Bob shares Alice's role but owns nothing of hers."""
    return get_user_model().objects.create_user("bob", "bob@example.org", "bob-password-1")


@pytest.fixture
def charlie(db):
    """Charlie must see nothing private."""
    return get_user_model().objects.create_user("charlie", "charlie@example.org", "charlie-password-1")


@pytest.fixture
def persona(alice):
    return Persona.objects.create(slug="miner", name="Miner Mo", owner=alice, allowed_actions=["say", "jump"])


@pytest.fixture
def game_server(alice):
    server = GameServer(name="Alice's world", owner=alice)
    server.raw_token = server.set_new_token()
    server.save()
    return server


@pytest.fixture
def npc(game_server, persona):
    return Npc.objects.create(game_server=game_server, world_id="npc-1", persona=persona, display_name="Mo")


@pytest.fixture
def private_persona(alice):
    """Alice's private persona: her servers may use it, and those she shares it with."""
    return Persona.objects.create(
        slug="secret", name="Secret Sam", owner=alice, is_public=False, system_prompt="Alice's secret prompt."
    )


@pytest.fixture
def private_npc(game_server, private_persona):
    return Npc.objects.create(game_server=game_server, world_id="npc-secret", persona=private_persona)


@pytest.fixture
def bob_server(bob):
    """Bob's game server: it may use public personas and Bob's own, and what Alice shares with it."""
    server = GameServer(name="Bob's world", owner=bob)
    server.raw_token = server.set_new_token()
    server.save()
    return server


@pytest.fixture(autouse=True)
def fresh_channel_layer():
    """Each test's event loop gets its own channel layer (Redis pools and locks bind to a loop)."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def in_memory_topology(monkeypatch):
    """This test runs as if REDIS_URL were unset: an in-memory channel layer and in-process heartbeats.

    The embedded default's tests need it, so that they run (and the worker inside the web process is exercised)
    whether or not the environment names a Redis. Channels drops its cached layers when CHANNEL_LAYERS changes.
    """
    from django.test import override_settings

    from inference import client, heartbeat

    monkeypatch.setattr(heartbeat, "_store", None)  # heartbeats() picks its store again, for the settings below
    monkeypatch.setattr(client, "_live_cache", (0.0, []))  # no worker ids remembered from the Redis store
    with override_settings(
        REDIS_URL=None,
        CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}},
    ):
        yield


@pytest.fixture(autouse=True)
def fresh_policy_rules():
    """Each test reads the policy rules it set up: no copy kept from an earlier test's rolled-back rows."""
    from agents_app import policy

    policy.forget_rules()
    yield
    policy.forget_rules()


@pytest.fixture
def dana(django_user_model):
    """Dana is a moderator."""
    from agents_app.moderation import moderator_grant

    user = django_user_model.objects.create_user("dana", "dana@example.org", "dana-password-1")
    return moderator_grant(user=user)


@pytest.fixture
def erin(django_user_model):
    """Erin is staff (she edits personas) but no moderator: moderators' queues and actions are not hers."""
    from django.contrib.auth.models import Group

    user = django_user_model.objects.create_user("erin", "erin@example.org", "erin-password-1", is_staff=True)
    user.groups.add(Group.objects.get(name="modder"))
    return user
