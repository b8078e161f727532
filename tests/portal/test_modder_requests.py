"""The modder role on request: charlie asks from his profile, dana (a moderator) decides in the admin."""

from __future__ import annotations

import pytest

from agents_app.models import ModderRequest
from tests.portal.clients import client_for, csrf_post

pytestmark = pytest.mark.django_db
ADMIN = "/admin/agents_app/modderrequest/"


def ask(user, motivation="A blacksmith persona for my server."):
    client = client_for(user)
    response = csrf_post(client, "/profile/modder-request/", {"motivation": motivation})
    return client, response


def state(client) -> str:
    page = client.get("/profile/").content.decode()
    return page.split('id="modder-state">')[1].split("<")[0]


def decide(moderator, request, action):
    return csrf_post(client_for(moderator), ADMIN, {"action": action, "_selected_action": [request.pk], "index": "0"})


def test_a_player_asks_and_sees_the_request_pending(charlie):
    client, response = ask(charlie)
    assert response.status_code == 302 and response["Location"] == "/profile/#modder"
    assert state(client) == "pending"
    request = ModderRequest.objects.get()
    assert (request.user, request.status, request.motivation) == (
        charlie,
        "pending",
        "A blacksmith persona for my server.",
    )


def test_a_second_request_while_one_waits_is_refused_with_a_message(charlie):
    ask(charlie)
    client, _ = ask(charlie, "again")
    assert "already waiting for a moderator" in client.get("/profile/").content.decode()
    assert ModderRequest.objects.count() == 1


def test_an_empty_or_overlong_motivation_is_refused_and_nothing_is_stored(charlie):
    for motivation in ("   ", "x" * 1001):
        client, _ = ask(charlie, motivation)
        assert "Not sent: motivation" in client.get("/profile/").content.decode()
    assert not ModderRequest.objects.exists()


def test_a_modder_has_nothing_to_ask(alice):
    client, _ = ask(alice)
    assert "already have the modder role" in client.get("/profile/").content.decode()
    assert state(client) == "modder" and not ModderRequest.objects.exists()


def test_a_moderator_approves_and_the_player_becomes_a_modder(charlie, dana):
    ask(charlie)
    request = ModderRequest.objects.get()
    response = decide(dana, request, "approve_requests")
    assert response.status_code == 302
    request.refresh_from_db()
    assert (request.status, request.decided_by) == ("approved", dana)
    charlie = type(charlie).objects.get(pk=charlie.pk)  # a fresh permission cache
    assert charlie.has_perm("agents_app.add_persona") and state(client_for(charlie)) == "modder"


def test_a_refused_request_says_so_and_the_player_may_ask_again(charlie, dana):
    ask(charlie)
    request = ModderRequest.objects.get()
    decide(dana, request, "refuse_requests")
    client = client_for(charlie)
    assert state(client) == "refused"
    assert not type(charlie).objects.get(pk=charlie.pk).has_perm("agents_app.add_persona")
    ask(charlie, "A better idea now.")
    assert state(client) == "pending" and ModderRequest.objects.count() == 2


def test_a_player_cannot_decide_requests(charlie):
    ask(charlie)
    request = ModderRequest.objects.get()
    decide(charlie, request, "approve_requests")
    assert ModderRequest.objects.get().status == "pending"
