"""Accounts: sign up, log in and out, reset a password, link a game name, roles."""

import re

import pytest
from django.contrib.auth.models import Group
from django.core import mail

from agents_app import gateway
from agents_app.models import PlayerLink
from tests.factories import make_exchange, verified_link
from tests.portal.clients import client_for, csrf_post

pytestmark = pytest.mark.django_db


def test_the_roles_exist_after_migrate_with_their_permissions():
    perms = {g.name: set(g.permissions.values_list("codename", flat=True)) for g in Group.objects.all()}
    assert {"player", "modder", "moderator"} <= set(perms)
    assert "add_rating" in perms["player"] and "add_adapterversion" not in perms["player"]
    assert "add_adapterversion" in perms["modder"] and "change_adapterversion" not in perms["modder"]
    assert "change_adapterversion" in perms["moderator"]


def test_signing_up_makes_a_logged_in_player(django_user_model):
    client = client_for()
    response = csrf_post(
        client,
        "/accounts/signup/",
        {"username": "dora", "email": "Dora@Example.org", "password1": "a-long-pass-9", "password2": "a-long-pass-9"},
    )
    assert response.status_code == 302 and response["Location"] == "/profile/"
    dora = django_user_model.objects.get(username="dora")
    assert dora.email == "dora@example.org"
    assert list(dora.groups.values_list("name", flat=True)) == ["player"]
    assert "player" in client.get("/profile/").content.decode()


def test_signing_up_rejects_mismatched_passwords_and_a_taken_email(alice):
    client = client_for()
    response = csrf_post(
        client,
        "/accounts/signup/",
        {"username": "eve", "email": "alice@example.org", "password1": "a-long-pass-9", "password2": "other-pass-9"},
    )
    assert response.status_code == 400
    body = response.content.decode()
    assert "already exists" in body and "didn’t match" in body


def test_signup_needs_the_csrf_token():
    response = client_for().post("/accounts/signup/", {"username": "x"})
    assert response.status_code == 403


def test_logging_in_and_out(alice):
    client = client_for()
    response = csrf_post(client, "/accounts/login/", {"username": "alice", "password": "alice-password-1"})
    assert response.status_code == 302
    assert client.get("/profile/").status_code == 200
    assert csrf_post(client, "/accounts/logout/").status_code == 302
    assert client.get("/profile/").status_code == 302


def test_a_wrong_password_does_not_log_in(alice):
    response = csrf_post(client_for(), "/accounts/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200 and "correct username and password" in response.content.decode()


def test_a_password_reset_mails_a_link_that_sets_a_new_password(alice):
    client = client_for()
    assert csrf_post(client, "/accounts/password_reset/", {"email": "alice@example.org"}).status_code == 302
    assert len(mail.outbox) == 1
    link = re.search(r"http://testserver(/accounts/reset/\S+)", mail.outbox[0].body).group(1)
    form_url = client.get(link)["Location"]  # Django swaps the token for a session marker
    response = csrf_post(client, form_url, {"new_password1": "brand-new-pass-7", "new_password2": "brand-new-pass-7"})
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("brand-new-pass-7")


def test_a_reset_for_an_unknown_email_sends_nothing_and_says_the_same():
    response = csrf_post(client_for(), "/accounts/password_reset/", {"email": "nobody@example.org"})
    assert response.status_code == 302 and len(mail.outbox) == 0


def test_the_profile_needs_a_login():
    response = client_for().get("/profile/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_linking_a_game_name_shows_a_code_that_the_game_confirms(alice, npc):
    client = client_for(alice)
    response = csrf_post(client, "/profile/", {"player_name": "steve"})
    assert response.status_code == 200
    code = re.search(r"/voyager link ([A-Z0-9]{8})", response.content.decode()).group(1)
    gateway.player_link_verify(player_name="steve", code=code)  # what `/voyager link CODE` does in game
    assert PlayerLink.objects.get(user=alice, player_name="steve").verified
    make_exchange(npc, player="steve", reply="for steve")
    make_exchange(npc, player="herobrine", reply="for herobrine")
    body = client.get("/replies/?mine=1").content.decode()
    assert "for steve" in body and "for herobrine" not in body
    assert "steve (you)" in body


def test_a_bad_or_taken_game_name_is_refused_with_a_message(alice, bob):
    verified_link(bob, "steve")
    client = client_for(alice)
    response = csrf_post(client, "/profile/", {"player_name": "no spaces!"})
    assert response.status_code == 400 and "1-20 letters" in response.content.decode()
    response = csrf_post(client, "/profile/", {"player_name": "steve"})
    assert response.status_code == 400 and "already linked to another account" in response.content.decode()


def test_someone_elses_mine_filter_does_not_show_my_conversations(alice, bob, npc):
    verified_link(alice, "steve")
    make_exchange(npc, player="steve", reply="private chat")
    assert "private chat" not in client_for(bob).get("/replies/?mine=1").content.decode()


def test_a_player_name_is_shown_only_with_consent(alice, charlie, npc):
    link = verified_link(alice, "steve")
    make_exchange(npc, player="steve", reply="hello steve")
    body = client_for(charlie).get("/replies/").content.decode()
    assert "a player" in body and "steve" not in body.replace("hello steve", "")
    assert csrf_post(client_for(alice), f"/profile/links/{link.pk}/visibility/", {"show": "1"}).status_code == 302
    body = client_for(charlie).get("/replies/").content.decode()
    assert '<strong class="player">steve</strong>' in body


def test_an_unlinked_player_name_is_never_shown(charlie, npc):
    make_exchange(npc, player="herobrine", reply="boo")
    assert "herobrine" not in client_for(charlie).get("/replies/").content.decode()
    assert "herobrine" not in client_for().get("/").content.decode()


def test_only_the_owner_can_change_or_remove_a_link(alice, charlie):
    link = verified_link(alice, "steve")
    client = client_for(charlie)
    assert csrf_post(client, f"/profile/links/{link.pk}/visibility/", {"show": "1"}).status_code == 404
    assert csrf_post(client, f"/profile/links/{link.pk}/remove/").status_code == 404
    link.refresh_from_db()
    assert not link.show_publicly
    assert csrf_post(client_for(alice), f"/profile/links/{link.pk}/remove/").status_code == 302
    assert not PlayerLink.objects.filter(pk=link.pk).exists()


def test_an_unconfirmed_link_cannot_be_made_public(alice):
    link = PlayerLink.objects.create(user=alice, player_name="steve")
    response = csrf_post(client_for(alice), f"/profile/links/{link.pk}/visibility/", {"show": "1"})
    assert response.status_code == 400 and "confirm it in game first" in response.content.decode()
