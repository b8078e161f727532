"""Game-server registration in the portal: a token shown once and stored hashed, rotated, revoked; owners only."""

import html
import re
from datetime import UTC, datetime

import pytest

from agents_app import services
from agents_app.models import Exchange, GameServer, Npc
from agents_app.services import game_server_authenticate
from tests.factories import make_exchange
from tests.portal.clients import client_for, csrf_post

pytestmark = pytest.mark.django_db
PAGE = "/profile/servers/"
TOKEN_RE = re.compile(r'<code id="server-token">(vgs_[A-Za-z0-9_-]+)</code>')


def body(response) -> str:
    return html.unescape(response.content.decode())


def shown_token(response) -> str:
    found = TOKEN_RE.findall(response.content.decode())
    assert len(found) == 1, "exactly one token on the page"
    return found[0]


def register(user, name="Survival world"):
    return csrf_post(client_for(user), PAGE, {"name": name})


def errors(response) -> str:
    return body(response).split('id="form-errors">')[1].split("</p>")[0]


def test_a_user_registers_a_server_and_sees_its_token_once(charlie):
    client = client_for(charlie)
    response = csrf_post(client, PAGE, {"name": "  Survival world  "})
    assert response.status_code == 201
    assert "no-store" in response["Cache-Control"]
    token = shown_token(response)
    server = GameServer.objects.get(owner=charlie)
    assert server.name == "Survival world"
    assert server.token_hash == GameServer.hash_token(token) and token not in server.token_hash
    assert game_server_authenticate(token) == server
    again = body(client.get(PAGE))
    assert token not in again and "Survival world" in again and f"{token[:10]}…" in again


def test_the_token_comes_with_the_lines_for_minetest_conf(charlie):
    response = register(charlie)
    token = shown_token(response)
    settings_block = body(response).split('<pre id="mod-settings">')[1].split("</pre>")[0]
    assert settings_block.splitlines() == [
        "secure.trusted_mods = voyager",
        "voyager.url = ws://testserver/ws/luanti/",
        f"voyager.token = {token}",
    ]
    later = body(client_for(charlie).get(PAGE)).split('<pre id="mod-settings">')[1].split("</pre>")[0]
    assert "voyager.token = <the token shown when you registered the server>" in later


def test_the_list_shows_only_the_users_own_servers_with_npcs_and_last_seen(alice, bob, charlie, npc, game_server):
    GameServer.objects.filter(pk=game_server.pk).update(last_seen_at=datetime(2031, 5, 6, 7, 8, tzinfo=UTC))
    Npc.objects.create(game_server=game_server, world_id="npc-2", persona=npc.persona)
    register(bob, "Bob's world")
    page = body(client_for(alice).get(PAGE))
    row = page.split(f'<tr id="server-{game_server.pk}">')[1].split("</tr>")[0]
    assert "Alice's world" in row and "2031-05-06 07:08" in row and "<td>2</td>" in row
    assert "Bob's world" not in page
    bobs = body(client_for(bob).get(PAGE))
    assert "Bob's world" in bobs and "Alice's world" not in bobs and "never" in bobs
    nothing = body(client_for(charlie).get(PAGE))
    assert "No servers yet." in nothing and "Alice's world" not in nothing and "Bob's world" not in nothing


@pytest.mark.parametrize(
    "name, message",
    [
        ("", "name: This field is required."),
        ("   ", "name: This field is required."),
        ("x" * 101, "name: Ensure this value has at most 100 characters"),
        ("Alice's world", 'name: you already have a server named "Alice\'s world"; choose another name'),
    ],
)
def test_it_refuses_a_bad_name_naming_the_field(alice, game_server, name, message):
    response = register(alice, name)
    assert response.status_code == 400
    assert message in errors(response)
    assert "server-token" not in response.content.decode()
    assert list(GameServer.objects.values_list("name", flat=True)) == ["Alice's world"]


def test_two_owners_may_use_the_same_name(alice, bob, game_server):
    assert register(bob, "Alice's world").status_code == 201
    assert GameServer.objects.filter(name="Alice's world").count() == 2


def test_it_refuses_more_servers_than_the_cap(alice, game_server, monkeypatch):
    monkeypatch.setattr(services, "MAX_GAME_SERVERS_PER_OWNER", 1)
    response = register(alice, "Second")
    assert response.status_code == 400 and "name: you have 1 servers already" in errors(response)
    assert GameServer.objects.count() == 1


def test_a_new_token_is_shown_once_after_a_redirect_and_the_old_one_stops_working(alice, game_server):
    old = game_server.raw_token
    client = client_for(alice)
    response = csrf_post(client, f"{PAGE}{game_server.pk}/token/")
    assert response.status_code == 302 and response["Location"] == f"{PAGE}#new-token"
    shown = client.get(PAGE)
    assert shown.status_code == 200 and "no-store" in shown["Cache-Control"]
    new = shown_token(shown)
    assert new != old
    assert game_server_authenticate(old) is None
    assert game_server_authenticate(new) == game_server
    # A reload shows the page again without the token and rotates nothing.
    again = client.get(PAGE).content.decode()
    assert new not in again and 'id="server-token"' not in again
    assert game_server_authenticate(new) == game_server
    assert new not in client_for(alice).get(PAGE).content.decode()


def test_asking_for_a_new_token_first_asks_for_confirmation_and_changes_nothing(alice, game_server):
    response = client_for(alice).get(f"{PAGE}{game_server.pk}/token/")
    page = body(response)
    assert response.status_code == 200 and "Replace the token of Alice" in page
    assert f'action="{PAGE}{game_server.pk}/token/"' in page and 'method="post"' in page
    assert game_server_authenticate(game_server.raw_token) == game_server


def test_the_servers_page_has_copy_buttons_for_the_token_and_the_config_lines(alice, game_server):
    client = client_for(alice)
    csrf_post(client, f"{PAGE}{game_server.pk}/token/")
    page = body(client.get(PAGE))
    assert 'data-copy="#server-token"' in page and 'data-copy="#mod-settings"' in page


def test_revoking_a_server_whose_npcs_never_talked_deletes_it(alice, game_server, npc):
    response = csrf_post(client_for(alice), f"{PAGE}{game_server.pk}/revoke/")
    assert response.status_code == 302 and response["Location"] == PAGE
    assert not GameServer.objects.exists() and not Npc.objects.exists()
    assert game_server_authenticate(game_server.raw_token) is None
    assert "is deleted" in body(client_for(alice).get(PAGE))


def test_revoking_a_server_whose_npcs_talked_keeps_the_conversations_and_kills_the_token(alice, game_server, npc):
    exchange = make_exchange(npc)
    response = csrf_post(client_for(alice), f"{PAGE}{game_server.pk}/revoke/")
    assert response.status_code == 302
    game_server.refresh_from_db()
    assert not game_server.enabled and Exchange.objects.filter(pk=exchange.pk).exists()
    assert game_server_authenticate(game_server.raw_token) is None
    row = body(client_for(alice).get(PAGE)).split(f'<tr id="server-{game_server.pk}">')[1].split("</tr>")[0]
    assert "revoked" in row and "New token" not in row
    response = csrf_post(client_for(alice), f"{PAGE}{game_server.pk}/token/")
    assert response.status_code == 403 and "is revoked" in body(response)
    assert "server-token" not in response.content.decode()


def test_revoking_falls_back_to_disabling_when_an_npc_talks_during_the_check(alice, game_server, npc, monkeypatch):
    make_exchange(npc)

    class NoneYet:  # the check runs before the exchange lands; the delete then meets it
        class objects:
            @staticmethod
            def filter(**_):
                return Exchange.objects.none()

    monkeypatch.setattr(services, "Exchange", NoneYet)
    assert services.game_server_revoke(server=game_server) is False
    game_server.refresh_from_db()
    assert not game_server.enabled and Exchange.objects.count() == 1 and Npc.objects.count() == 1


def test_nobody_else_can_touch_a_server(alice, bob, charlie, game_server):
    before = GameServer.objects.values().get(pk=game_server.pk)
    for user in (bob, charlie):
        for action in ("token", "revoke"):
            response = csrf_post(client_for(user), f"{PAGE}{game_server.pk}/{action}/")
            assert response.status_code == 404, (user, action)
            assert "server-token" not in response.content.decode()
    assert GameServer.objects.values().get(pk=game_server.pk) == before
    assert csrf_post(client_for(alice), f"{PAGE}999999/token/").status_code == 404


def test_every_form_needs_the_csrf_token(alice, game_server):
    client = client_for(alice)
    before = GameServer.objects.values().get(pk=game_server.pk)
    assert client.post(PAGE, {"name": "Sneaky"}).status_code == 403
    assert client.post(f"{PAGE}{game_server.pk}/token/").status_code == 403
    assert client.post(f"{PAGE}{game_server.pk}/revoke/").status_code == 403
    assert list(GameServer.objects.values()) == [before]


def test_a_visitor_is_sent_to_log_in(game_server):
    for response in (client_for().get(PAGE), csrf_post(client_for(), f"{PAGE}{game_server.pk}/token/")):
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert game_server_authenticate(game_server.raw_token) == game_server


def test_only_a_post_rotates_or_revokes(alice, game_server):
    assert client_for(alice).get(f"{PAGE}{game_server.pk}/token/").status_code == 200  # the confirmation
    assert client_for(alice).get(f"{PAGE}{game_server.pk}/revoke/").status_code == 405
    assert game_server_authenticate(game_server.raw_token) == game_server


def test_the_profile_and_the_navigation_link_to_the_servers_page(charlie):
    page = body(client_for(charlie).get("/profile/"))
    assert 'id="my-servers"' in page and page.count(f'href="{PAGE}"') == 2
    assert f'href="{PAGE}"' not in body(client_for().get("/"))
