"""Spam raters: a moderator blocks a rater (a portal account or a bare game name) and their ratings leave training."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import ADDITION, LogEntry
from django.db import IntegrityError, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agents_app.models import Exchange, PairwiseVote, PlayerLink, RaterBlock, Rating
from agents_app.moderation import raters_block
from training_tasks.dataset import dataset_build

pytestmark = pytest.mark.django_db
RATINGS = reverse("admin:agents_app_rating_changelist")
BLOCKS = reverse("admin:agents_app_raterblock_changelist")


def say(npc, prompt: str, raw: str = "Hello.") -> Exchange:
    return Exchange.objects.create(
        npc=npc, persona=npc.persona, player_name="x", player_text="hi", prompt=prompt, raw_text=raw, reply_text=raw
    )


def rate(exchange, score=1, *, user=None, player="") -> Rating:
    return Rating.objects.create(
        exchange=exchange, score=score, **({"user": user} if user else {"player_name": player})
    )


def used(persona) -> set[int]:
    return set(dataset_build(persona=persona, heldout_fraction=0.0).rating_ids)


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_blocked_players_ratings_are_left_out_of_the_snapshot_and_others_on_the_same_reply_count(npc):
    ex = say(npc, "p1")
    honest = rate(ex, 1, player="steve")
    rate(ex, -1, player="spammy")
    rate(say(npc, "p2"), -1, player="spammy")
    RaterBlock.objects.create(player_name="spammy", reason="downvotes everything")
    snap = dataset_build(persona=npc.persona, heldout_fraction=0.0)
    assert snap.rating_ids == [honest.pk]
    assert [e["label"] for e in snap.train.kto] == [True]  # the spammer's -1 no longer cancels steve's +1


def test_blocking_a_game_name_does_not_block_an_account_of_the_same_name_unless_linked(npc, bob):
    a, b = rate(say(npc, "p1"), player="bob"), rate(say(npc, "p2"), user=bob)
    RaterBlock.objects.create(player_name="bob")
    assert used(npc.persona) == {b.pk}
    PlayerLink.objects.create(user=bob, player_name="bob", verified_at=timezone.now())
    assert used(npc.persona) == set() and a.pk not in used(npc.persona)


def test_a_blocked_account_loses_its_ratings_its_votes_and_its_verified_game_name(npc, alice, bob):
    left, right = say(npc, "q", "Left."), say(npc, "q", "Right.")
    kept = PairwiseVote.objects.create(left=left, right=right, voter=alice, outcome="left")
    PairwiseVote.objects.create(left=left, right=right, voter=bob, outcome="right")
    mine = rate(say(npc, "p1"), user=alice)
    rate(say(npc, "p2"), user=bob)
    in_game = rate(say(npc, "p3"), player="bobcraft")
    PlayerLink.objects.create(user=bob, player_name="bobcraft", verified_at=timezone.now())
    assert used(npc.persona) == {mine.pk, in_game.pk, *(r.pk for r in Rating.objects.filter(user=bob))}
    RaterBlock.objects.create(user=bob)
    snap = dataset_build(persona=npc.persona, heldout_fraction=0.0)
    assert set(snap.rating_ids) == {mine.pk} and snap.pairwise_vote_ids == [kept.pk]
    assert snap.train.dpo == [{"prompt": "q", "chosen": "Left.", "rejected": "Right."}]


def test_a_rater_is_blocked_once_and_a_block_names_exactly_one_rater(bob):
    RaterBlock.objects.create(player_name="spammy")
    with pytest.raises(IntegrityError), transaction.atomic():
        RaterBlock.objects.create(player_name="spammy")
    with pytest.raises(IntegrityError), transaction.atomic():
        RaterBlock.objects.create(user=bob, player_name="spammy")
    with pytest.raises(IntegrityError), transaction.atomic():
        RaterBlock.objects.create()


def test_a_moderator_marks_the_raters_of_selected_ratings_and_unmarks_them(dana, npc, alice):
    by_player, by_user = rate(say(npc, "p1"), player="spammy"), rate(say(npc, "p2"), user=alice)
    again = rate(say(npc, "p3"), player="spammy")
    honest = rate(say(npc, "p4"), player="steve")
    client = client_for(dana)
    selected = [by_player.pk, by_user.pk, again.pk]
    page = client.post(RATINGS, {"action": "block_raters", "_selected_action": selected, "index": 0}, follow=True)
    assert "Marked 2 rater(s) as spammers" in page.content.decode()
    blocks = {(b.user_id, b.player_name, b.created_by_id) for b in RaterBlock.objects.all()}
    assert blocks == {(None, "spammy", dana.pk), (alice.pk, "", dana.pk)}
    assert used(npc.persona) == {honest.pk}
    assert LogEntry.objects.filter(user=dana, action_flag=ADDITION).count() == 2
    assert client.get(BLOCKS).status_code == 200  # the moderator sees the list of blocked raters

    client.post(RATINGS, {"action": "unblock_raters", "_selected_action": [again.pk], "index": 0})
    assert list(RaterBlock.objects.values_list("user_id", flat=True)) == [alice.pk]
    assert used(npc.persona) == {honest.pk, by_player.pk, again.pk}


def test_a_moderator_blocks_a_game_name_by_hand_in_the_admin(dana, npc):
    spam = rate(say(npc, "p1"), player="spammy")
    response = client_for(dana).post(
        reverse("admin:agents_app_raterblock_add"), {"player_name": "spammy", "reason": "bot"}
    )
    assert response.status_code == 302
    block = RaterBlock.objects.get()
    assert (block.player_name, block.reason, block.created_by) == ("spammy", "bot", dana)
    assert spam.pk not in used(npc.persona)


def test_someone_who_is_not_a_moderator_can_neither_mark_raters_nor_see_the_blocks(erin, npc):
    spam = rate(say(npc, "p1"), player="spammy")
    client = client_for(erin)
    assert client.get(RATINGS).status_code == 200  # she may see ratings (her role changes them)...
    assert "block_raters" not in client.get(RATINGS).content.decode()  # ...but is not offered the action
    client.post(RATINGS, {"action": "block_raters", "_selected_action": [spam.pk], "index": 0})
    assert client.get(BLOCKS).status_code == 403
    assert client.post(reverse("admin:agents_app_raterblock_add"), {"player_name": "spammy"}).status_code == 403
    assert not RaterBlock.objects.exists() and used(npc.persona) == {spam.pk}


def test_the_service_leaves_an_already_blocked_rater_alone(npc, dana):
    first = raters_block(ratings=[rate(say(npc, "p1"), player="spammy")], created_by=dana, reason="first")
    second = raters_block(ratings=[rate(say(npc, "p2"), player="spammy")], created_by=None, reason="second")
    assert len(first) == 1 and second == []
    assert RaterBlock.objects.get().reason == "first"
