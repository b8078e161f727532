"""Under a reply on the portal, a player writes the reply they wanted."""

from __future__ import annotations

import pytest

from agents_app.models import Correction
from tests.factories import make_exchange
from tests.portal.clients import client_for, csrf_json_post, csrf_post

pytestmark = pytest.mark.django_db


def test_the_feed_offers_a_correction_under_each_reply_to_players_only(charlie, npc):
    exchange = make_exchange(npc)
    assert f"/replies/{exchange.pk}/correct/" in client_for(charlie).get("/replies/").content.decode()
    assert f"/replies/{exchange.pk}/correct/" not in client_for().get("/replies/").content.decode()


def test_a_player_saves_a_correction_and_goes_back_where_they_were(charlie, npc):
    exchange = make_exchange(npc)
    response = csrf_post(
        client_for(charlie),
        f"/replies/{exchange.pk}/correct/",
        {"text": "Iron? East tunnel. [[ACTION:jump]]", "next": "/replies/?mine=1"},
    )
    assert response.status_code == 302 and response["Location"] == "/replies/?mine=1"
    correction = Correction.objects.get()
    assert (correction.user, correction.source, correction.reply_text) == (charlie, "web", "Iron? East tunnel.")


def test_a_correction_over_fetch_answers_json_and_refuses_with_the_reason(charlie, npc):
    exchange = make_exchange(npc)
    client = client_for(charlie)
    ok = csrf_json_post(client, f"/replies/{exchange.pk}/correct/", {"text": "Hello."})
    assert ok.status_code == 201 and ok.json()["reply_text"] == "Hello."
    assert csrf_json_post(client, f"/replies/{exchange.pk}/correct/", {"text": "Hi."}).status_code == 200
    bad = csrf_json_post(client, f"/replies/{exchange.pk}/correct/", {"text": "[[ACTION:fly]]"})
    assert bad.status_code == 400 and "may not take the action 'fly'" in bad.json()["error"]
    missing = csrf_json_post(client, f"/replies/{exchange.pk}/correct/", {})
    assert missing.status_code == 400 and missing.json()["error"].startswith("text:")
    assert Correction.objects.get().text == "Hi."


def test_only_players_correct_replies_they_may_see(charlie, private_npc):
    exchange = make_exchange(private_npc)
    assert csrf_json_post(client_for(), f"/replies/{exchange.pk}/correct/", {"text": "Hi."}).status_code == 403
    assert csrf_json_post(client_for(charlie), f"/replies/{exchange.pk}/correct/", {"text": "Hi."}).status_code == 404
    assert not Correction.objects.exists()
