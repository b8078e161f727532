"""The rating feed: replies with their context, thumbs with reasons, filters, pagination, query budget."""

import json

import pytest

from agents_app.models import GameServer, Npc, Rating
from agents_app.services import rating_upsert
from tests.factories import make_exchange, verified_link
from tests.portal.clients import client_for, count_queries, csrf_json_post, csrf_post

pytestmark = pytest.mark.django_db


def test_a_reply_shows_the_words_context_reply_and_actions(charlie, npc):
    make_exchange(
        npc,
        text="got food?",
        reply="Take an apple.",
        context={"pos": [1, 2, 3], "nearby": ["tree"]},
        actions=[{"name": "give", "args": ["default:apple", "1"]}],
    )
    body = client_for(charlie).get("/replies/").content.decode()
    for fragment in ["got food?", "Take an apple.", "1, 2, 3", "tree", "give default:apple 1", "Miner Mo"]:
        assert fragment in body


def test_model_and_player_text_is_escaped(charlie, npc):
    make_exchange(npc, text="<img src=x onerror=alert(1)>", reply="<script>alert(1)</script>")
    body = client_for(charlie).get("/replies/").content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "<script>alert" not in body
    assert "<img src=x" not in body


def test_rating_answers_with_the_new_counts_and_changing_it_updates_in_place(alice, charlie, npc):
    exchange = make_exchange(npc)
    rating_upsert(exchange=exchange, score=1, user=alice)
    client = client_for(charlie)
    response = csrf_json_post(client, f"/replies/{exchange.pk}/rate/", {"score": "-1", "tags": ["rude", "funny"]})
    assert response.status_code == 201
    assert response.json() == {"exchange": str(exchange.pk), "score": -1, "tags": ["funny", "rude"], "up": 1, "down": 1}
    response = csrf_json_post(client, f"/replies/{exchange.pk}/rate/", {"score": "1", "reason": "actually fine"})
    assert response.status_code == 200 and (response.json()["up"], response.json()["down"]) == (2, 0)
    rating = Rating.objects.get(exchange=exchange, user=charlie)
    assert (rating.score, rating.tags, rating.reason, rating.source) == (1, [], "actually fine", "web")
    assert Rating.objects.filter(exchange=exchange).count() == 2


def test_rating_without_javascript_redirects_back(charlie, npc):
    exchange = make_exchange(npc)
    response = csrf_post(client_for(charlie), f"/replies/{exchange.pk}/rate/", {"score": "1", "next": "/replies/"})
    assert response.status_code == 302 and response["Location"] == "/replies/"
    response = csrf_post(
        client_for(charlie), f"/replies/{exchange.pk}/rate/", {"score": "1", "next": "https://evil.example/"}
    )
    assert response["Location"] == "/replies/"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"score": "2"}, "score"),
        ({}, "score"),
        ({"score": "1", "tags": ["boring"]}, "tags"),
        ({"score": "1", "reason": "x" * 501}, "reason"),
    ],
)
def test_a_bad_rating_is_refused_naming_the_field(charlie, npc, data, message):
    exchange = make_exchange(npc)
    response = csrf_json_post(client_for(charlie), f"/replies/{exchange.pk}/rate/", data)
    assert response.status_code == 400 and response.json()["error"].startswith(message)
    assert not Rating.objects.exists()


def test_rating_needs_a_login_and_the_csrf_token(charlie, npc):
    exchange = make_exchange(npc)
    response = csrf_json_post(client_for(), f"/replies/{exchange.pk}/rate/", {"score": "1", "next": "/replies/"})
    assert response.status_code == 401 and "log in again" in response.json()["error"]
    assert response.json()["code"] == "login_required"
    assert response.json()["login"] == "/accounts/login/?next=%2Freplies%2F"
    response = client_for(charlie).post(f"/replies/{exchange.pk}/rate/", {"score": "1"})
    assert response.status_code == 403
    assert not Rating.objects.exists()


def test_an_account_without_a_role_cannot_rate(django_user_model, npc):
    nobody = django_user_model.objects.create_user("nobody", "", "nobody-pass-1")
    exchange = make_exchange(npc)
    response = csrf_json_post(client_for(nobody), f"/replies/{exchange.pk}/rate/", {"score": "1"})
    assert response.status_code == 403 and "role" in response.json()["error"]


def test_a_private_personas_replies_are_hidden_from_others_and_cannot_be_rated(alice, charlie, private_npc):
    exchange = make_exchange(private_npc, reply="secret words")
    assert "secret words" not in client_for(charlie).get("/replies/").content.decode()
    response = csrf_json_post(client_for(charlie), f"/replies/{exchange.pk}/rate/", {"score": "1"})
    assert response.status_code == 404
    assert "secret words" in client_for(alice).get("/replies/").content.decode()
    assert csrf_json_post(client_for(alice), f"/replies/{exchange.pk}/rate/", {"score": "1"}).status_code == 201


def test_a_malformed_exchange_id_is_a_404_with_a_message(charlie):
    response = csrf_json_post(client_for(charlie), "/replies/not-a-uuid/rate/", {"score": "1"})
    assert response.status_code == 404 and "not an exchange id" in response.json()["error"]


def test_filters_by_persona_server_and_not_yet_rated(alice, charlie, npc, persona):
    from agents_app.models import Persona

    other_persona = Persona.objects.create(slug="baker", name="Baker Bea", owner=alice)
    other_server = GameServer(name="Other world", owner=alice)
    other_server.set_new_token()
    other_server.save()
    other_npc = Npc.objects.create(game_server=other_server, world_id="b", persona=other_persona)
    rated = make_exchange(npc, reply="miner rated")
    make_exchange(npc, reply="miner fresh")
    make_exchange(other_npc, reply="baker says")
    rating_upsert(exchange=rated, score=1, user=charlie)
    client = client_for(charlie)
    body = client.get("/replies/?persona=baker").content.decode()
    assert "baker says" in body and "miner fresh" not in body
    body = client.get(f"/replies/?server={other_server.pk}").content.decode()
    assert "baker says" in body and "miner fresh" not in body
    body = client.get("/replies/?unrated=1").content.decode()
    assert "miner fresh" in body and "miner rated" not in body
    assert client_for().get("/replies/?mine=1").status_code == 403
    assert client.get("/replies/?server=abc").status_code == 400


def test_the_feed_pages_with_a_cursor_and_rejects_a_forged_one(charlie, npc):
    for i in range(25):
        make_exchange(npc, reply=f"reply number {i:02d}")
    client = client_for(charlie)
    body = client.get("/replies/").content.decode()
    assert "reply number 24" in body and "reply number 04" not in body
    older = [part for part in body.split('"') if part.startswith("?cursor=")][0].replace("&amp;", "&")
    body = client.get("/replies/" + older).content.decode()
    assert "reply number 04" in body and "reply number 05" not in body.split("reply number 04")[1]
    assert "reply number 24" not in body
    response = client.get("/replies/?cursor=garbage")
    assert response.status_code == 400 and "cursor" in response.content.decode()


def test_the_number_of_queries_does_not_grow_with_the_data(alice, bob, charlie, npc):
    verified_link(alice, "p0", public=True)
    client = client_for(charlie)
    make_exchange(npc, player="p0")
    small = count_queries(client, "/replies/")
    for i in range(40):
        e = make_exchange(npc, player=f"p{i % 7}", actions=[{"name": "jump", "args": []}])
        for user in (alice, bob, charlie):
            rating_upsert(exchange=e, score=1 if i % 2 else -1, user=user, tags=["funny"])
    assert small >= 8  # session, user, permissions, page, counts, my ratings, names, filters
    assert count_queries(client, "/replies/") == small
    assert count_queries(client, "/replies/?unrated=1&mine=1") <= small + 1


def test_json_answers_are_json(charlie, npc):
    exchange = make_exchange(npc)
    response = csrf_json_post(client_for(charlie), f"/replies/{exchange.pk}/rate/", {"score": "1"})
    assert json.loads(response.content)["up"] == 1
