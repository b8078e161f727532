"""Sharing a private persona with game servers, on its edit page: only its owner, only with a server that exists."""

import html

import pytest
from django.contrib.auth.models import Group

from agents_app.models import GameServer, PersonaShare
from agents_app.services import InvalidFields, game_server_revoke, persona_share_add
from tests.factories import make_exchange
from tests.portal.clients import client_for, csrf_post

pytestmark = pytest.mark.django_db


def body(response) -> str:
    return html.unescape(response.content.decode())


def shared_with(persona) -> list[str]:
    return sorted(PersonaShare.objects.filter(persona=persona).values_list("game_server__name", flat=True))


def test_the_owner_shares_a_private_persona_on_its_edit_page_and_stops(alice, bob_server, private_persona):
    page = body(client_for(alice).get("/personas/secret/edit/"))
    assert 'id="share-form"' in page and "Shared with no other server." in page
    response = csrf_post(client_for(alice), "/personas/secret/shares/", {"server": bob_server.pk})
    assert response.status_code == 302 and response["Location"] == "/personas/secret/edit/"
    assert shared_with(private_persona) == ["Bob's world"]
    page = body(client_for(alice).get("/personas/secret/edit/"))
    row = page.split(f'<tr id="share-{bob_server.pk}">')[1].split("</tr>")[0]
    assert "Bob's world" in row and "bob" in row and f"/personas/secret/shares/{bob_server.pk}/remove/" in row
    again = csrf_post(client_for(alice), "/personas/secret/shares/", {"server": bob_server.pk})
    assert again.status_code == 302 and shared_with(private_persona) == ["Bob's world"]
    removed = csrf_post(client_for(alice), f"/personas/secret/shares/{bob_server.pk}/remove/")
    assert removed.status_code == 302 and shared_with(private_persona) == []


def test_nobody_but_the_owner_may_share(alice, bob, charlie, bob_server, persona, private_persona):
    moderator = type(alice).objects.create_user("mod", "", "mod-password-1")
    moderator.groups.add(Group.objects.get(name="moderator"))
    for user in (bob, charlie, moderator):
        response = csrf_post(client_for(user), "/personas/miner/shares/", {"server": bob_server.pk})
        assert response.status_code == 403 and "only its owner" in body(response), user
    # Someone else's private persona is not admitted to exist, to share or to stop sharing.
    assert csrf_post(client_for(bob), "/personas/secret/shares/", {"server": bob_server.pk}).status_code == 404
    persona_share_add(persona=private_persona, server_id=bob_server.pk)
    assert csrf_post(client_for(bob), f"/personas/secret/shares/{bob_server.pk}/remove/").status_code == 404
    assert csrf_post(client_for(), "/personas/secret/shares/", {"server": bob_server.pk}).status_code == 302  # log in
    assert shared_with(persona) == [] and shared_with(private_persona) == ["Bob's world"]


def test_sharing_needs_the_csrf_token(alice, bob_server, private_persona):
    assert client_for(alice).post("/personas/secret/shares/", {"server": bob_server.pk}).status_code == 403
    assert shared_with(private_persona) == []


@pytest.mark.parametrize(
    "server, message",
    [
        ("99999", "server: there is no game server 99999; ask its owner for its id"),
        ("bob", "server: Enter a whole number."),
        ("", "server: This field is required."),
        ("own", "your own servers use your personas already"),
        ("revoked", "server: there is no game server"),
    ],
)
def test_a_share_with_no_server_of_someone_else_is_refused_naming_the_field(
    alice, bob_server, game_server, private_persona, server, message
):
    if server == "own":
        server = game_server.pk
    elif server == "revoked":
        make_exchange(private_npc_of(bob_server, private_persona))  # it has talked: revoking keeps it, disabled
        assert game_server_revoke(server=bob_server) is False
        server = bob_server.pk
    response = csrf_post(client_for(alice), "/personas/secret/shares/", {"server": server})
    assert response.status_code == 400 and message in body(response)
    assert 'id="share-errors"' in body(response) and shared_with(private_persona) == []


def private_npc_of(server, persona):
    return server.npcs.create(world_id="npc-b", persona=persona)


def test_stopping_a_share_that_is_not_there_is_not_found(alice, bob_server, private_persona):
    assert csrf_post(client_for(alice), f"/personas/secret/shares/{bob_server.pk}/remove/").status_code == 404


def test_the_service_refuses_an_unknown_or_own_server(alice, game_server, private_persona):
    for server_id in (99999, game_server.pk, "x"):
        with pytest.raises(InvalidFields) as refused:
            persona_share_add(persona=private_persona, server_id=server_id)
        assert list(refused.value.fields) == ["server"]
    assert not PersonaShare.objects.exists()


def test_a_deleted_server_takes_its_shares_with_it(bob_server, private_persona):
    persona_share_add(persona=private_persona, server_id=bob_server.pk)
    GameServer.objects.filter(pk=bob_server.pk).delete()
    assert not PersonaShare.objects.exists()


def test_the_servers_page_shows_each_servers_id_to_give_a_personas_owner(bob, bob_server):
    page = body(client_for(bob).get("/profile/servers/"))
    row = page.split(f'<tr id="server-{bob_server.pk}">')[1].split("</tr>")[0]
    assert f"<td>{bob_server.pk}</td>" in row
