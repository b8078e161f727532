"""The dataset builder: which ratings go in, and what they become. Fast; runs on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from agents_app.models import Exchange, Npc, PairwiseVote, Persona, PolicyFlag, Rating
from training_tasks import dataset
from training_tasks.dataset import balance_weights, dataset_build, is_heldout

pytestmark = pytest.mark.django_db


def say(npc, prompt="P: hi", raw="Hello alice. [[ACTION:jump]]", player="alice", **kw) -> Exchange:
    return Exchange.objects.create(
        npc=npc,
        persona=npc.persona,
        player_name=player,
        player_text="hi",
        prompt=prompt,
        raw_text=raw,
        reply_text=raw.split("[[")[0].strip(),
        **kw,
    )


def rate(exchange, score, *, user=None, player="") -> Rating:
    rater = {"user": user} if user else {"player_name": player or f"p{Rating.objects.count()}"}
    return Rating.objects.create(exchange=exchange, score=score, **rater)


def everything_in(persona):
    """All data in training (no held-out split) so assertions see every example."""
    return dataset_build(persona=persona, heldout_fraction=0.0)


def test_a_liked_reply_becomes_a_kto_example_with_the_prompt_the_model_saw(npc):
    ex = say(npc, prompt="<|system|>You are Mo.<|end|>\n<|player|>alice: hi<|end|>\n<|npc|>", raw="Hi alice!")
    r = rate(ex, 1)
    snap = everything_in(npc.persona)
    assert snap.rating_ids == [r.pk]
    assert snap.train.kto == [{"prompt": ex.prompt, "completion": "Hi alice!", "label": True}]
    assert snap.train.sft == [{"prompt": ex.prompt, "completion": "Hi alice!"}]


def test_exchanges_a_moderator_excluded_stay_out(npc):
    kept = rate(say(npc, prompt="a"), 1)
    rate(say(npc, prompt="b", excluded_from_training=True), 1)
    assert everything_in(npc.persona).rating_ids == [kept.pk]


def test_only_confirmed_policy_flags_keep_an_exchange_out(npc):
    confirmed, opened, dismissed = say(npc, prompt="c"), say(npc, prompt="o"), say(npc, prompt="d")
    for ex, status in ((confirmed, "confirmed"), (opened, "open"), (dismissed, "dismissed")):
        PolicyFlag.objects.create(exchange=ex, rule="action_not_allowed", status=status)
        rate(ex, -1)
    prompts = {e["prompt"] for e in everything_in(npc.persona).train.kto}
    assert prompts == {"o", "d"}


def test_ratings_by_spammers_are_left_out_and_others_on_the_same_reply_count(npc, alice, bob):
    Group.objects.get_or_create(name=dataset.SPAMMER_GROUP)[0].user_set.add(bob)
    ex = say(npc)
    honest = rate(ex, 1, user=alice)
    rate(ex, -1, user=bob)
    rate(say(npc, prompt="spam only"), 1, user=bob)
    snap = everything_in(npc.persona)
    assert snap.rating_ids == [honest.pk]
    assert [e["label"] for e in snap.train.kto] == [True]


def test_other_personas_ratings_stay_out(npc, alice):
    other = Persona.objects.create(slug="other", name="Other", owner=alice)
    other_npc = Npc.objects.create(world_id="npc-other", persona=other)
    rate(say(other_npc), 1)
    mine = rate(say(npc), -1)
    assert everything_in(npc.persona).rating_ids == [mine.pk]


def test_raters_who_disagree_cancel_out(npc):
    ex = say(npc)
    rate(ex, 1)
    rate(ex, -1)
    snap = everything_in(npc.persona)
    assert snap.train.kto == [] and snap.rating_ids == [] and snap.counts["exchanges_tied"] == 1


def test_same_prompt_replies_with_opposite_ratings_make_a_dpo_pair(npc):
    rate(say(npc, prompt="same", raw="Hi alice!"), 1)
    rate(say(npc, prompt="same", raw="Go away."), -1)
    rate(say(npc, prompt="lonely", raw="Hm."), -1)
    assert everything_in(npc.persona).train.dpo == [{"prompt": "same", "chosen": "Hi alice!", "rejected": "Go away."}]


def test_pairwise_votes_on_the_same_prompt_make_pairs_but_ties_and_spammers_do_not(npc, alice, bob):
    Group.objects.get_or_create(name=dataset.SPAMMER_GROUP)[0].user_set.add(bob)
    left, right = say(npc, prompt="q", raw="Left."), say(npc, prompt="q", raw="Right.")
    vote = PairwiseVote.objects.create(left=left, right=right, voter=alice, outcome="right")
    PairwiseVote.objects.create(left=left, right=right, voter=bob, outcome="left")
    PairwiseVote.objects.create(left=right, right=left, voter=alice, outcome="tie")
    snap = everything_in(npc.persona)
    assert snap.train.dpo == [{"prompt": "q", "chosen": "Right.", "rejected": "Left."}]
    assert snap.pairwise_vote_ids == [vote.pk]


def test_the_held_out_split_keeps_a_prompt_on_one_side_and_is_stable(npc):
    prompts = [f"prompt {i}" for i in range(200)]
    for p in prompts:
        rate(say(npc, prompt=p, raw="Hi alice"), 1)
        rate(say(npc, prompt=p, raw="No."), -1)
    first = dataset_build(persona=npc.persona, heldout_fraction=0.25)
    again = dataset_build(persona=npc.persona, heldout_fraction=0.25)
    held = {e.prompt for e in first.heldout.liked + first.heldout.disliked}
    trained = {e["prompt"] for e in first.train.kto}
    assert held and trained and not held & trained
    assert held == {p for p in prompts if is_heldout(p, 0.25)} == {e.prompt for e in again.heldout.liked}
    assert 20 < len(held) < 80


def test_balance_weights_even_out_liked_and_disliked():
    assert balance_weights(10, 40) == (1.0, 0.25)
    assert balance_weights(40, 10) == (0.25, 1.0)
    assert balance_weights(0, 5) == (1.0, 1.0)


def test_disliked_replies_are_capped_and_the_snapshot_lists_only_what_went_in(npc):
    liked = [rate(say(npc, prompt=f"l{i}"), 1) for i in range(5)]
    disliked = [rate(say(npc, prompt=f"d{i}"), -1) for i in range(40)]
    snap = everything_in(npc.persona)
    assert snap.counts["train_liked"] == 5 and snap.counts["train_disliked"] == 20
    assert snap.train.desirable_weight == 1.0 and snap.train.undesirable_weight == 0.25
    used = set(snap.rating_ids)
    assert {r.pk for r in liked} <= used and len(used & {r.pk for r in disliked}) == 20


def test_one_reply_said_to_many_players_is_kept_only_a_few_times(npc):
    for i, player in enumerate(["alice", "bob", "kim", "luna", "noor", "emma"]):
        # The model names any player, not only the one who asked.
        rate(say(npc, prompt=f"bye {i}", raw=f"See you, {['kim', 'bob'][i % 2]}.", player=player), 1)
    rate(say(npc, prompt="bye 9", raw="Farewell, alice. Mind the anvil."), 1)
    snap = dataset_build(persona=npc.persona, heldout_fraction=0.0, max_copies_per_reply=2)
    kept = sorted(e["completion"] for e in snap.train.sft)
    # Which two copies stay is not fixed (names are masked when replies are compared): two of them do.
    assert kept[0] == "Farewell, alice. Mind the anvil." and len(kept) == 3
    assert all(k in ("See you, bob.", "See you, kim.") for k in kept[1:])
    assert snap.counts["train_copies_dropped"] == 4 and len(snap.rating_ids) == 3
    assert len(dataset_build(persona=npc.persona, heldout_fraction=0.0).train.sft) == 7  # 0: keep every copy
