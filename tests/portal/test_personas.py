"""Persona catalog and pages, adapter pages, leaderboards, and the compare view."""

import pytest
from django.utils import timezone

from agents_app.models import PairwiseVote, Persona
from agents_app.services import rating_upsert
from tests.factories import adapter, make_exchange
from tests.portal.clients import client_for, count_queries, csrf_json_post, csrf_post

pytestmark = pytest.mark.django_db


def test_the_catalog_lists_public_personas_and_hides_private_ones_from_others(alice, charlie, persona, private_persona):
    body = client_for(charlie).get("/personas/").content.decode()
    assert "Miner Mo" in body and "Secret Sam" not in body
    assert "Secret Sam" in client_for(alice).get("/personas/").content.decode()
    assert client_for(charlie).get("/personas/secret/").status_code == 404
    assert client_for(alice).get("/personas/secret/").status_code == 200


def test_a_persona_page_shows_traits_active_version_trend_and_best_and_worst(alice, bob, charlie, npc, persona):
    persona.traits = ["gruff", "knows the mines"]
    v1 = adapter(persona, 1, status="retired")
    v2 = adapter(persona, 2, status="active")
    persona.active_adapter = v2
    persona.save()
    good = make_exchange(npc, reply="A fine answer", adapter_version=v2)
    bad = make_exchange(npc, reply="A rude answer", adapter_version=v1)
    for user in (alice, bob, charlie):
        rating_upsert(exchange=good, score=1, user=user)
        rating_upsert(exchange=bad, score=-1, user=user)
    body = client_for(charlie).get("/personas/miner/").content.decode()
    assert "gruff" in body and "knows the mines" in body
    assert 'href="/personas/miner/v2/">v2</a>' in body
    assert '<svg id="trend"' in body and "v1" in body and "<polyline" in body
    best, worst = body.split("Best rated replies")[1].split("Worst rated replies")
    assert "A fine answer" in best and "A rude answer" not in best
    assert "A rude answer" in worst and "A fine answer" not in worst


def test_a_persona_page_with_no_ratings_says_so(charlie, persona):
    body = client_for(charlie).get("/personas/miner/").content.decode()
    assert "No ratings in the last 90 days" in body and "none (the base model answers)" in body


def test_an_unknown_persona_is_a_404(charlie):
    assert client_for(charlie).get("/personas/nobody/").status_code == 404


def test_unapproved_versions_are_visible_to_the_owner_only(alice, charlie, persona):
    adapter(persona, 1, status="uploaded")
    assert client_for(charlie).get("/personas/miner/v1/").status_code == 404
    assert client_for(alice).get("/personas/miner/v1/").status_code == 200
    assert "v1" not in client_for(charlie).get("/personas/miner/").content.decode().split("Versions")[1][:200]


def test_the_model_card_is_rendered_as_safe_markdown(charlie, persona):
    card = "# Bram v1\n\n**bold** <script>alert(1)</script> [x](javascript:alert(1)) [ok](https://example.org)"
    adapter(persona, 1, status="approved", card=card)
    body = client_for(charlie).get("/personas/miner/v1/").content.decode()
    assert "<h1>Bram v1</h1>" in body and "<strong>bold</strong>" in body
    assert "&lt;script&gt;" in body and "<script>alert" not in body
    assert 'href="javascript:' not in body and 'href="https://example.org"' in body


def test_only_approved_versions_can_be_downloaded(alice, charlie, persona, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    approved = adapter(persona, 1, status="approved")
    adapter(persona, 2, status="validated")
    approved.absolute_path.mkdir(parents=True)
    (approved.absolute_path / "adapter_model.safetensors").write_bytes(b"weights")
    (approved.absolute_path / "adapter_config.json").write_bytes(b"{}")
    response = client_for(charlie).get("/personas/miner/v1/download/")
    assert response.status_code == 200 and b"".join(response.streaming_content) == b"weights"
    response = client_for(charlie).get("/personas/miner/v1/download/?file=config")
    assert response.status_code == 200 and b"".join(response.streaming_content) == b"{}"
    response = client_for(charlie).get("/personas/miner/v1/download/?file=../../etc/passwd")
    assert response.status_code == 400 and "file: must be weights or config" in response.content.decode()
    assert client_for(charlie).get("/personas/miner/v2/download/").status_code == 404
    response = client_for(alice).get("/personas/miner/v2/download/")
    assert response.status_code == 403 and "only approved versions" in response.content.decode()


def test_the_leaderboard_ranks_personas_by_confidence_and_raters_by_count(alice, bob, charlie, npc, game_server):
    from agents_app.models import Npc

    lucky = Persona.objects.create(slug="lucky", name="Lucky Lu", owner=alice)
    lucky_npc = Npc.objects.create(game_server=game_server, world_id="l", persona=lucky)
    rating_upsert(exchange=make_exchange(lucky_npc), score=1, user=alice)  # 1 of 1
    for i in range(30):  # 27 of 30
        e = make_exchange(npc, text=f"q{i}")
        rating_upsert(exchange=e, score=1 if i >= 3 else -1, user=bob)
    rating_upsert(exchange=e, score=1, user=charlie)
    body = client_for().get("/leaderboard/").content.decode()
    personas = body.split('id="persona-board"')[1].split("</table>")[0]
    assert personas.index("Miner Mo") < personas.index("Lucky Lu")
    raters = body.split('id="rater-board"')[1]
    assert raters.index("bob") < raters.index("alice")


def test_the_leaderboard_counts_changed_and_removed_ratings_as_they_now_stand(alice, bob, charlie, npc):
    from django.contrib.auth.models import AnonymousUser

    from agents_app.models import Rating
    from portal.selectors import persona_leaderboard

    first, second = make_exchange(npc, text="a"), make_exchange(npc, text="b")
    rating_upsert(exchange=first, score=1, user=alice)
    rating_upsert(exchange=second, score=1, user=bob)
    rating_upsert(exchange=second, score=1, user=charlie)
    rating_upsert(exchange=first, score=-1, user=alice)  # alice changed her mind
    Rating.objects.filter(user=charlie).delete()  # a moderator removed charlie's
    (row,) = persona_leaderboard(AnonymousUser())
    assert (row["persona__slug"], row["up"], row["total"], row["share"]) == ("miner", 1, 2, 50)


def test_compare_pairs_two_replies_to_similar_words_and_records_the_vote(charlie, npc):
    a = make_exchange(npc, text="where is the iron?", reply="East tunnel.")
    b = make_exchange(npc, text="where can I find iron", reply="Try the west shaft.")
    make_exchange(npc, text="sing me a song", reply="La la.")
    client = client_for(charlie)
    body = client.get("/compare/").content.decode()
    assert "East tunnel." in body and "Try the west shaft." in body and "La la." not in body
    response = csrf_post(client, "/compare/", {"left": str(a.pk), "right": str(b.pk), "outcome": "left"})
    assert response.status_code == 302
    vote = PairwiseVote.objects.get(voter=charlie)
    winner = vote.left if vote.outcome == "left" else vote.right
    assert winner == a
    # Voting again on the same pair (even swapped) changes the vote, not a second row.
    csrf_post(client, "/compare/", {"left": str(b.pk), "right": str(a.pk), "outcome": "left"})
    vote = PairwiseVote.objects.get(voter=charlie)
    assert (vote.left if vote.outcome == "left" else vote.right) == b
    assert "No pair of replies" in client.get("/compare/").content.decode()


def test_compare_refuses_bad_pairs_with_a_message(alice, charlie, npc, game_server):
    from agents_app.models import Npc

    other = Npc.objects.create(
        game_server=game_server, world_id="o", persona=Persona.objects.create(slug="baker", name="Bea", owner=alice)
    )
    a, b = make_exchange(npc), make_exchange(other)
    client = client_for(charlie)
    response = csrf_json_post(client, "/compare/", {"left": str(a.pk), "right": str(b.pk), "outcome": "left"})
    assert response.status_code == 400 and "same persona" in response.json()["error"]
    response = csrf_json_post(client, "/compare/", {"left": str(a.pk), "right": str(a.pk), "outcome": "tie"})
    assert response.status_code == 400 and "different reply" in response.json()["error"]
    response = csrf_json_post(client, "/compare/", {"left": str(a.pk), "right": str(b.pk), "outcome": "meh"})
    assert response.status_code == 400 and response.json()["error"].startswith("outcome")
    response = csrf_json_post(client_for(), "/compare/", {"left": str(a.pk), "right": str(b.pk), "outcome": "tie"})
    assert response.status_code == 403
    assert not PairwiseVote.objects.exists()


def test_compare_does_not_offer_private_replies_to_others(charlie, private_npc):
    make_exchange(private_npc, text="where is iron", reply="secret one")
    make_exchange(private_npc, text="where is the iron", reply="secret two")
    assert "secret one" not in client_for(charlie).get("/compare/").content.decode()
    assert client_for(charlie).get("/compare/?persona=secret").status_code == 404


def test_home_page_still_lists_personas(charlie, npc):
    make_exchange(npc, reply="hi", created_at=timezone.now())
    assert "Miner Mo" in client_for(charlie).get("/").content.decode()


def test_the_persona_page_makes_as_many_queries_with_much_data_as_with_little(alice, bob, charlie, npc, persona):
    from django.core.cache import cache

    client = client_for(charlie)
    rating_upsert(exchange=make_exchange(npc, reply="first"), score=-1, user=alice)
    rating_upsert(exchange=make_exchange(npc, reply="second"), score=1, user=alice)
    cache.clear()
    small = count_queries(client, "/personas/miner/")
    v1 = adapter(persona, 1, status="active")
    for i in range(30):
        e = make_exchange(npc, text=f"q{i}", adapter_version=v1 if i % 2 else None)
        for user in (alice, bob, charlie):
            rating_upsert(exchange=e, score=1 if (i + user.pk) % 3 else -1, user=user)
    cache.clear()
    assert count_queries(client, "/personas/miner/") == small  # cold: the statistics are precomputed, not cached
    assert count_queries(client, "/personas/miner/") == small
