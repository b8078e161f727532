"""Corrections and battle votes in the nightly snapshot, moderated like ratings. Fast."""

from __future__ import annotations

import random

import pytest

from agents_app import arena, corrections
from agents_app.models import Correction, Exchange, RaterBlock
from tests.factories import adapter
from training_tasks import services
from training_tasks.dataset import dataset_build, is_heldout
from training_tasks.simulation import battle_outcome

pytestmark = pytest.mark.django_db


def exchange(npc, prompt="<|npc|> P", raw="Dunno."):
    return Exchange.objects.create(
        npc=npc, persona=npc.persona, player_name="steve", player_text="hi", prompt=prompt, raw_text=raw, reply_text=raw
    )


def everything_in(persona):
    return dataset_build(persona=persona, heldout_fraction=0.0)


def test_a_correction_is_a_supervised_example_on_the_prompt_the_model_saw(npc, charlie):
    ex = exchange(npc, prompt="<|player|>steve: where is iron?<|npc|>")
    c, _ = corrections.correction_upsert(
        exchange=ex, text="East tunnel, steve. [[ACTION:jump]]", user=charlie, source="web"
    )
    snap = everything_in(npc.persona)
    assert snap.train.sft == [{"prompt": ex.prompt, "completion": "East tunnel, steve. [[ACTION:jump]]"}]
    assert snap.correction_ids == [c.pk]
    assert snap.counts["corrections"] == snap.counts["train_corrections"] == 1
    assert snap.rating_ids == [] and snap.train.kto == []


def test_a_correction_on_a_held_out_prompt_is_held_out_too(npc):
    prompts = [f"<|npc|> prompt {k}" for k in range(40)]
    held = next(p for p in prompts if is_heldout(p, 0.5))
    trained = next(p for p in prompts if not is_heldout(p, 0.5))
    for k, prompt in enumerate((held, trained)):
        corrections.correction_upsert(
            exchange=exchange(npc, prompt=prompt), text=f"Reply {k}.", player_name="steve", source="game"
        )
    snap = dataset_build(persona=npc.persona, heldout_fraction=0.5)
    assert [e["prompt"] for e in snap.train.sft] == [trained]
    assert [e.prompt for e in snap.heldout.liked] == [held]


def test_corrections_are_moderated_like_ratings(npc, charlie, bob):
    kept, _ = corrections.correction_upsert(exchange=exchange(npc, prompt="a"), text="A.", user=charlie, source="web")
    excluded, _ = corrections.correction_upsert(
        exchange=exchange(npc, prompt="b"), text="B.", player_name="ann", source="game"
    )
    Correction.objects.filter(pk=excluded.pk).update(excluded_from_training=True)
    spam, _ = corrections.correction_upsert(exchange=exchange(npc, prompt="c"), text="C.", user=bob, source="web")
    RaterBlock.objects.create(user=bob)
    on_excluded = exchange(npc, prompt="d")
    corrections.correction_upsert(exchange=on_excluded, text="D.", player_name="ann", source="game")
    on_excluded.excluded_from_training = True
    on_excluded.save()
    snap = everything_in(npc.persona)
    assert snap.correction_ids == [kept.pk]
    assert [e["completion"] for e in snap.train.sft] == ["A."]


def test_new_corrections_and_votes_count_towards_a_nightly_run(npc):
    assert services.new_ratings_count(npc.persona) == 0
    corrections.correction_upsert(exchange=exchange(npc), text="A.", player_name="steve", source="game")
    assert services.new_ratings_count(npc.persona) == 1


def test_same_prompt_battle_votes_become_dpo_pairs_and_ties_and_skips_do_not(persona, charlie):
    adapter(persona, 1, status="active")
    adapter(persona, 2, status="canary")
    outcomes = ["left", "right", "tie", "both_bad", "skip"]
    for k, outcome in enumerate(outcomes):
        plan = arena.battle_prepare(
            user=charlie, persona=persona, text=f"question {k}", player="charlie", rng=random.Random(k)
        )
        # The same prompt for both sides (what the engine renders for one persona, words and empty memory).
        left = {"text": f"good {k}", "raw_text": f"good {k}", "prompt": f"<|npc|> {k}", "actions": []}
        right = {"text": f"bad {k}", "raw_text": f"bad {k}", "prompt": f"<|npc|> {k}", "actions": []}
        battle = arena.battle_record(user=charlie, plan=plan, left=left, right=right, total_ms=1.0)
        arena.battle_vote(user=charlie, battle_id=battle.pk, outcome=outcome)
    snap = everything_in(persona)
    assert sorted(snap.train.dpo, key=lambda p: p["prompt"]) == [
        {"prompt": "<|npc|> 0", "chosen": "good 0", "rejected": "bad 0"},
        {"prompt": "<|npc|> 1", "chosen": "bad 1", "rejected": "good 1"},
    ]
    assert snap.counts["pairwise_votes"] == 2 and len(snap.pairwise_vote_ids) == 2


def test_a_blocked_voters_battles_stay_out(persona, charlie):
    adapter(persona, 1, status="active")
    plan = arena.battle_prepare(user=charlie, persona=persona, text="q", player="charlie")
    side = {"text": "x", "raw_text": "x", "prompt": "P", "actions": []}
    battle = arena.battle_record(user=charlie, plan=plan, left=side, right={**side, "raw_text": "y"}, total_ms=1.0)
    arena.battle_vote(user=charlie, battle_id=battle.pk, outcome="left")
    RaterBlock.objects.create(user=charlie)
    assert everything_in(persona).train.dpo == []


@pytest.mark.parametrize(
    "left, right, outcome",
    [(True, False, "left"), (False, True, "right"), (True, True, "tie"), (False, False, "both_bad")],
)
def test_simulated_players_vote_by_their_hidden_rule(left, right, outcome):
    assert battle_outcome(left, right) == outcome
