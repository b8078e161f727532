"""Training data from the ratings database: which ratings count, and how they become examples.

Selectors return querysets; ``dataset_build`` turns one persona's eligible
ratings into a snapshot: the rating and vote ids that went in (stored on the
TrainingRun), KTO examples, SFT examples, DPO pairs, a held-out split for the
gate and balance weights. The completion is ``Exchange.raw_text`` (actions
markup included) after ``Exchange.prompt``, exactly as the model saw and wrote
them.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Exists, OuterRef, QuerySet

from agents_app.models import Exchange, PairwiseVote, Persona, PolicyFlag, Rating
from training_tasks.trainers import TrainingData

# Moderators put spamming portal accounts in this auth group (Django admin → Groups).
SPAMMER_GROUP = "spammers"
# Disliked replies kept for KTO per liked one: the rest add little and cost time.
MAX_DISLIKED_PER_LIKED = 4
MAX_PAIRS_PER_PROMPT = 4


@dataclass
class Example:
    exchange_id: str
    prompt: str
    completion: str
    label: bool  # liked?


@dataclass
class HeldOut:
    liked: list[Example] = field(default_factory=list)
    disliked: list[Example] = field(default_factory=list)
    pairs: list[dict[str, str]] = field(default_factory=list)

    def prompts(self) -> list[str]:
        seen: dict[str, None] = {}
        for ex in self.liked + self.disliked:
            seen.setdefault(ex.prompt, None)
        return list(seen)


@dataclass
class DatasetSnapshot:
    rating_ids: list[int]
    pairwise_vote_ids: list[int]
    train: TrainingData
    heldout: HeldOut
    counts: dict[str, Any]


def usable_exchanges(persona: Persona) -> QuerySet[Exchange]:
    """A persona's exchanges that may train it: not excluded by a moderator, no confirmed policy flag."""
    confirmed = PolicyFlag.objects.filter(exchange=OuterRef("pk"), status=PolicyFlag.Status.CONFIRMED)
    return (
        Exchange.objects.filter(persona=persona, excluded_from_training=False)
        .exclude(prompt="")
        .exclude(raw_text="")
        .exclude(Exists(confirmed))
    )


def eligible_ratings(persona: Persona) -> QuerySet[Rating]:
    spammers = Rating.objects.filter(pk=OuterRef("pk"), user__groups__name=SPAMMER_GROUP)
    return Rating.objects.filter(exchange__in=usable_exchanges(persona)).exclude(Exists(spammers))


def eligible_pairwise_votes(persona: Persona) -> QuerySet[PairwiseVote]:
    usable = usable_exchanges(persona)
    spammers = PairwiseVote.objects.filter(pk=OuterRef("pk"), voter__groups__name=SPAMMER_GROUP)
    return (
        PairwiseVote.objects.filter(left__in=usable, right__in=usable, outcome__in=["left", "right"])
        .exclude(Exists(spammers))
        .select_related("left", "right")
    )


def is_heldout(prompt: str, fraction: float) -> bool:
    """Split by prompt so replies to one prompt stay together, and stay put from night to night."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def balance_weights(n_liked: int, n_disliked: int) -> tuple[float, float]:
    """KTO's desirable/undesirable weights so both sides weigh the same in the loss.

    TRL's guidance: keep ``desirable_weight * n_liked / (undesirable_weight * n_disliked)``
    in [1, 4/3]; we aim for 1 and never scale a weight above 1 (no exploding steps).
    """
    if n_liked == 0 or n_disliked == 0:
        return 1.0, 1.0
    if n_liked >= n_disliked:
        return round(n_disliked / n_liked, 4), 1.0
    return 1.0, round(n_liked / n_disliked, 4)


def dataset_build(
    *, persona: Persona, heldout_fraction: float = 0.2, seed: int = 0, max_ratings: int = 20000
) -> DatasetSnapshot:
    ratings = list(
        eligible_ratings(persona)
        .select_related("exchange")
        .order_by("-updated_at", "-pk")
        .only("pk", "score", "exchange__id", "exchange__prompt", "exchange__raw_text")[:max_ratings]
    )
    # One verdict per exchange: the sign of its raters' net score (ties say nothing).
    net: dict[Any, int] = defaultdict(int)
    by_exchange: dict[Any, list[int]] = defaultdict(list)
    exchanges: dict[Any, Exchange] = {}
    for rating in ratings:
        net[rating.exchange_id] += rating.score
        by_exchange[rating.exchange_id].append(rating.pk)
        exchanges[rating.exchange_id] = rating.exchange
    examples = [
        Example(str(xid), ex.prompt, ex.raw_text, net[xid] > 0) for xid, ex in exchanges.items() if net[xid] != 0
    ]
    examples.sort(key=lambda e: e.exchange_id)
    rng = random.Random(seed)

    train_liked, train_disliked, heldout = [], [], HeldOut()
    for ex in examples:
        if is_heldout(ex.prompt, heldout_fraction):
            (heldout.liked if ex.label else heldout.disliked).append(ex)
        else:
            (train_liked if ex.label else train_disliked).append(ex)

    # Same prompt, opposite verdicts: a preference pair for free.
    by_prompt: dict[str, dict[bool, list[Example]]] = defaultdict(lambda: {True: [], False: []})
    for ex in examples:
        by_prompt[ex.prompt][ex.label].append(ex)
    train_pairs: list[dict[str, str]] = []
    pair_exchanges: set[str] = set()
    for prompt, sides in by_prompt.items():
        combos = [(c, r) for c in sides[True] for r in sides[False]][:MAX_PAIRS_PER_PROMPT]
        for chosen, rejected in combos:
            pair = {"prompt": prompt, "chosen": chosen.completion, "rejected": rejected.completion}
            (heldout.pairs if is_heldout(prompt, heldout_fraction) else train_pairs).append(pair)
            pair_exchanges.update((chosen.exchange_id, rejected.exchange_id))

    votes = [v for v in eligible_pairwise_votes(persona) if v.left.prompt == v.right.prompt]
    for vote in votes:
        chosen, rejected = (vote.left, vote.right) if vote.outcome == "left" else (vote.right, vote.left)
        pair = {"prompt": chosen.prompt, "chosen": chosen.raw_text, "rejected": rejected.raw_text}
        (heldout.pairs if is_heldout(chosen.prompt, heldout_fraction) else train_pairs).append(pair)

    # Liked replies are rare: keep them all, and a bounded sample of the disliked ones.
    cap = max(MAX_DISLIKED_PER_LIKED * len(train_liked), 16)
    kept_disliked = train_disliked if len(train_disliked) <= cap else rng.sample(train_disliked, cap)
    used_exchanges = {e.exchange_id for e in train_liked + kept_disliked + heldout.liked + heldout.disliked}
    used_exchanges |= pair_exchanges
    rating_ids = sorted(pk for xid, pks in by_exchange.items() if str(xid) in used_exchanges for pk in pks)
    desirable, undesirable = balance_weights(len(train_liked), len(kept_disliked))
    kto = [{"prompt": e.prompt, "completion": e.completion, "label": e.label} for e in train_liked + kept_disliked]
    rng.shuffle(kto)
    train = TrainingData(
        sft=[{"prompt": e.prompt, "completion": e.completion} for e in train_liked],
        kto=kto,
        dpo=train_pairs,
        desirable_weight=desirable,
        undesirable_weight=undesirable,
    )
    counts = {
        "ratings_eligible": len(ratings),
        "ratings_used": len(rating_ids),
        "exchanges_rated": len(exchanges),
        "exchanges_tied": len(exchanges) - len(examples),
        "train_liked": len(train_liked),
        "train_disliked": len(kept_disliked),
        "train_disliked_dropped": len(train_disliked) - len(kept_disliked),
        "train_pairs": len(train_pairs),
        "heldout_liked": len(heldout.liked),
        "heldout_disliked": len(heldout.disliked),
        "heldout_pairs": len(heldout.pairs),
        "pairwise_votes": len(votes),
        "desirable_weight": desirable,
        "undesirable_weight": undesirable,
    }
    return DatasetSnapshot(rating_ids, sorted(v.pk for v in votes), train, heldout, counts)
