"""Rating where the reply is: tags and a reason saved with the vote, undo, and a tab whose session has ended."""

from __future__ import annotations

import pytest

from agents_app.models import ExchangeRatings, Rating
from tests.factories import make_exchange
from tests.portal.clients import client_for, csrf_json_post, csrf_post

pytestmark = pytest.mark.django_db


def rate(user, exchange, **data):
    return csrf_json_post(client_for(user), f"/replies/{exchange.pk}/rate/", data)


def test_tags_and_a_reason_are_saved_with_the_vote_and_sent_back(charlie, npc):
    exchange = make_exchange(npc)
    response = rate(charlie, exchange, score="1", tags=["helpful", "funny"], reason="  Knew the way.  ")
    assert response.status_code == 201
    assert response.json()["tags"] == ["funny", "helpful"]
    rating = Rating.objects.get()
    assert (rating.score, rating.tags, rating.reason) == (1, ["funny", "helpful"], "Knew the way.")


def test_a_tag_added_after_voting_is_saved_by_voting_again_with_it(charlie, npc):
    exchange = make_exchange(npc)
    rate(charlie, exchange, score="-1")
    response = rate(charlie, exchange, score="-1", tags=["rude"])
    assert response.status_code == 200 and response.json()["tags"] == ["rude"]
    assert Rating.objects.get().tags == ["rude"]


def test_an_unknown_tag_refuses_the_whole_vote(charlie, npc):
    exchange = make_exchange(npc)
    rate(charlie, exchange, score="1", tags=["helpful"])
    response = rate(charlie, exchange, score="-1", tags=["helpful", "boring"])
    assert response.status_code == 400 and response.json()["error"].startswith("tags")
    assert (Rating.objects.get().score, Rating.objects.get().tags) == (1, ["helpful"])


def test_undo_takes_the_vote_back_and_the_counts_follow(charlie, npc):
    exchange = make_exchange(npc)
    rate(charlie, exchange, score="1")
    assert ExchangeRatings.objects.get(exchange=exchange).total == 1
    response = csrf_json_post(client_for(charlie), f"/replies/{exchange.pk}/unrate/")
    assert response.status_code == 200
    assert response.json() == {"exchange": str(exchange.pk), "score": None, "tags": [], "up": 0, "down": 0}
    assert not Rating.objects.exists()
    assert ExchangeRatings.objects.get(exchange=exchange).total == 0


def test_undo_without_javascript_redirects_back_with_a_message(charlie, npc):
    exchange = make_exchange(npc)
    client = client_for(charlie)
    response = csrf_post(client, f"/replies/{exchange.pk}/unrate/", {"next": "/replies/?mine=1"})
    assert response.status_code == 302 and response["Location"] == "/replies/?mine=1"
    assert "You had not rated that reply." in client.get("/replies/").content.decode()


def test_undo_touches_only_ones_own_rating(charlie, dana, npc):
    exchange = make_exchange(npc)
    rate(dana, exchange, score="1")
    response = csrf_json_post(client_for(charlie), f"/replies/{exchange.pk}/unrate/")
    assert response.status_code == 200 and response.json()["up"] == 1
    assert Rating.objects.filter(user=dana).exists()


def test_undo_needs_a_login(npc):
    exchange = make_exchange(npc)
    response = csrf_json_post(client_for(), f"/replies/{exchange.pk}/unrate/")
    assert response.status_code == 401 and response.json()["code"] == "login_required"


def test_a_page_older_than_the_last_logout_gets_json_saying_log_in_again(charlie, npc):
    """Logging out elsewhere rotates the CSRF token; the old page's fetch is answered in JSON, not HTML."""
    exchange = make_exchange(npc)
    client = client_for(charlie)
    response = client.post(
        f"/replies/{exchange.pk}/rate/",
        {"score": "1", "csrfmiddlewaretoken": "stale" * 8, "next": "/replies/"},
        HTTP_ACCEPT="application/json",
        HTTP_X_CSRFTOKEN="stale" * 8,
    )
    assert response.status_code == 403 and response["Content-Type"] == "application/json"
    assert response.json()["code"] == "login_required" and "log in again" in response.json()["error"]
    assert not Rating.objects.exists()


def test_a_visitor_rating_without_javascript_is_sent_to_log_in_and_back(npc):  # and the vote kept
    exchange = make_exchange(npc)
    response = csrf_post(client_for(), f"/replies/{exchange.pk}/rate/", {"score": "1", "next": "/replies/"})
    assert response.status_code == 302 and response["Location"] == "/accounts/login/?next=%2Freplies%2F"


def test_every_reply_has_a_reason_box_undo_and_a_link_to_the_guidance(charlie, npc):
    exchange = make_exchange(npc)
    rate(charlie, exchange, score="1", reason="Knew the way.")
    page = client_for(charlie).get("/replies/").content.decode()
    card = page.split(f'id="reply-{exchange.pk}"')[1].split("</article>")[0]
    assert 'name="reason"' in card and "Knew the way." in card
    assert f'formaction="/replies/{exchange.pk}/unrate/"' in card and "hidden>Undo" not in card
    assert 'href="/rating-guide/"' in card


def test_the_rating_guidance_says_what_to_reward(client):
    page = client.get("/rating-guide/").content.decode()
    for point in ("In character", "Answers the question", "Acts sensibly", "Short"):
        assert point in page


def test_the_playground_says_it_needs_javascript(charlie):
    page = client_for(charlie).get("/playground/").content.decode()
    assert "<noscript>" in page and "The playground needs JavaScript" in page
    assert 'id="rate-template"' in page


def test_a_rating_of_a_test_exchange_moves_no_public_figure(alice, npc, persona):
    from agents_app.models import PersonaDayRatings
    from agents_app.services import rating_stats_rebuild
    from tests.factories import adapter

    v2 = adapter(persona, 2, status="validated")
    tried = make_exchange(npc, player=f"web:{alice.pk}", adapter_version=v2, is_test=True)
    assert rate(alice, tried, score="1").status_code == 201
    assert not ExchangeRatings.objects.exists() and not PersonaDayRatings.objects.exists()
    rating_stats_rebuild()
    assert not ExchangeRatings.objects.exists() and not PersonaDayRatings.objects.exists()
    assert csrf_json_post(client_for(alice), f"/replies/{tried.pk}/unrate/").status_code == 200
    assert not PersonaDayRatings.objects.exists()


def test_without_javascript_a_vote_from_an_ended_session_is_given_at_login(charlie, npc):
    exchange = make_exchange(npc)
    client = client_for()
    data = {"score": "-1", "tags": ["rude"], "reason": "Snapped at me.", "next": "/replies/"}
    response = csrf_post(client, f"/replies/{exchange.pk}/rate/", data)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert not Rating.objects.exists()
    response = csrf_post(client, "/accounts/login/", {"username": "charlie", "password": "charlie-password-1"})
    assert response.status_code == 302
    rating = Rating.objects.get()
    assert (rating.user, rating.score, rating.tags, rating.reason) == (charlie, -1, ["rude"], "Snapped at me.")
    assert "Your vote from before you logged in is saved." in client.get("/replies/").content.decode()


def test_a_kept_vote_that_no_longer_holds_is_reported_at_login_not_saved(charlie, npc):
    exchange = make_exchange(npc)
    client = client_for()
    csrf_post(client, f"/replies/{exchange.pk}/rate/", {"score": "7", "next": "/replies/"})
    csrf_post(client, "/accounts/login/", {"username": "charlie", "password": "charlie-password-1"})
    assert not Rating.objects.exists()
    page = client.get("/replies/").content.decode()
    assert "Your vote from before you logged in was not saved: score: must be 1" in page
