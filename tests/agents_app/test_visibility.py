"""Who may use a persona (agents_app.visibility): public ones anyone; a private one its owner's servers,
the servers it is shared with, its owner and moderators; nobody else."""

import pytest
from django.contrib.auth.models import AnonymousUser

from agents_app import visibility
from agents_app.models import Npc, Persona
from agents_app.services import persona_share_add

pytestmark = pytest.mark.django_db


def usable(server) -> list[str]:
    return sorted(Persona.objects.filter(visibility.usable_by_server(server)).values_list("slug", flat=True))


def visible(user) -> list[str]:
    return sorted(Persona.objects.filter(visibility.visible_to_user(user)).values_list("slug", flat=True))


@pytest.fixture
def charlies_secret(charlie):
    return Persona.objects.create(slug="charlies", name="Charlie's", owner=charlie, is_public=False)


def test_a_server_may_use_public_personas_its_owners_and_those_shared_with_it(
    game_server, bob_server, persona, private_persona, charlies_secret
):
    assert usable(game_server) == ["miner", "secret"]
    assert usable(bob_server) == ["miner"]
    persona_share_add(persona=private_persona, server_id=bob_server.pk)
    persona_share_add(persona=charlies_secret, server_id=bob_server.pk)
    assert usable(bob_server) == ["charlies", "miner", "secret"]
    assert usable(game_server) == ["miner", "secret"]  # a share is for one server, not for all


def test_a_share_with_a_public_persona_keeps_it_for_the_server_once_it_is_private(bob_server, persona):
    persona_share_add(persona=persona, server_id=bob_server.pk)
    Persona.objects.filter(pk=persona.pk).update(is_public=False)
    assert usable(bob_server) == ["miner"]
    assert Persona.objects.filter(visibility.usable_by_server(bob_server)).count() == 1  # one row, however many shares


def test_a_person_sees_public_personas_their_own_and_a_moderator_every_one(
    alice, bob, dana, persona, private_persona, charlies_secret, bob_server
):
    persona_share_add(persona=private_persona, server_id=bob_server.pk)
    assert visible(AnonymousUser()) == visible(None) == ["miner"]
    assert visible(alice) == ["miner", "secret"]
    assert visible(bob) == ["miner"]  # a share with Bob's server shows Bob nothing
    assert visible(dana) == ["charlies", "miner", "secret"]


def test_the_rule_reaches_a_persona_from_an_npc(bob_server, private_persona, persona):
    Npc.objects.create(game_server=bob_server, world_id="a", persona=private_persona)
    Npc.objects.create(game_server=bob_server, world_id="b", persona=persona)
    npcs = Npc.objects.filter(visibility.usable_by_server(bob_server, via="persona__"))
    assert list(npcs.values_list("world_id", flat=True)) == ["b"]
    persona_share_add(persona=private_persona, server_id=bob_server.pk)
    assert sorted(npcs.values_list("world_id", flat=True)) == ["a", "b"]


def test_an_asker_is_a_server_or_a_person(persona):
    with pytest.raises(TypeError):
        visibility.usable_by()
