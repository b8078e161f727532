"""Training data from the ratings database: which ratings count, and how they become examples.

Selectors return querysets; ``dataset_build`` turns one persona's eligible
ratings into a snapshot: the rating and vote ids that went in (stored on the
TrainingRun), KTO examples, SFT examples, DPO pairs, a held-out split for the
gate and balance weights. The completion is ``Exchange.raw_text`` (actions
markup included) after ``Exchange.prompt``, exactly as the model saw and wrote
them. Players' corrections (``agents_app.corrections``) are supervised examples
too: the exchange's prompt, and the reply the player wrote as the completion.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, Q, QuerySet

from agents_app.models import Correction, Exchange, PairwiseVote, Persona, PlayerLink, PolicyFlag, RaterBlock, Rating
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
    player: str = ""  # who asked
    asked_at: Any = None  # when (a datetime): examples go in the order they were asked

    @property
    def order(self) -> tuple:
        """The same data in the same order every night (an exchange's id alone is random)."""
        return (self.asked_at is None, self.asked_at or 0, self.exchange_id)


@dataclass
class HeldOut:
    liked: list[Example] = field(default_factory=list)
    disliked: list[Example] = field(default_factory=list)
    pairs: list[dict[str, str]] = field(default_factory=list)
    # Every player seen in the snapshot: diversity counts "See you, bob." and "See you, kim." as one reply.
    player_names: set[str] = field(default_factory=set)

    def prompts(self) -> list[str]:
        """Each held-out prompt once, in a fixed order that favours neither liked nor disliked ones."""
        seen: dict[str, None] = {}
        for ex in sorted(self.liked + self.disliked, key=lambda e: e.order):
            seen.setdefault(ex.prompt, None)
        return list(seen)


@dataclass
class DatasetSnapshot:
    rating_ids: list[int]
    pairwise_vote_ids: list[int]
    train: TrainingData
    heldout: HeldOut
    counts: dict[str, Any]
    correction_ids: list[int] = field(default_factory=list)


def usable_exchanges(persona: Persona) -> QuerySet[Exchange]:
    """A persona's exchanges that may train it: not excluded by a moderator, not a test of an unapproved
    version, no confirmed policy flag."""
    confirmed = PolicyFlag.objects.filter(exchange=OuterRef("pk"), status=PolicyFlag.Status.CONFIRMED)
    return (
        Exchange.objects.filter(persona=persona, excluded_from_training=False, is_test=False)
        .exclude(prompt="")
        .exclude(raw_text="")
        .exclude(Exists(confirmed))
    )


def _blocked_user(user_ref) -> Q:
    """The account is a spammer: in the spammers group, blocked, or linked to a blocked game name."""
    blocked_names = RaterBlock.objects.filter(user__isnull=True).values("player_name")
    linked_to_blocked = PlayerLink.objects.filter(
        user=user_ref, verified_at__isnull=False, player_name__in=blocked_names
    )
    return (
        Exists(get_user_model().objects.filter(pk=user_ref, groups__name=SPAMMER_GROUP))
        | Exists(RaterBlock.objects.filter(user=user_ref))
        | Exists(linked_to_blocked)
    )


def _blocked_player(name_ref) -> Q:
    """A bare game name is blocked, or is the verified name of a blocked or spamming account."""
    blocked_users = Q(user__in=RaterBlock.objects.filter(user__isnull=False).values("user")) | Q(
        user__groups__name=SPAMMER_GROUP
    )
    return Exists(RaterBlock.objects.filter(user__isnull=True, player_name=name_ref)) | Exists(
        PlayerLink.objects.filter(blocked_users, player_name=name_ref, verified_at__isnull=False)
    )


def eligible_ratings(persona: Persona) -> QuerySet[Rating]:
    """A persona's ratings that may train it: on usable exchanges, by raters no moderator blocked."""
    by_blocked_user = Q(user__isnull=False) & _blocked_user(OuterRef("user"))
    by_blocked_player = Q(user__isnull=True) & _blocked_player(OuterRef("player_name"))
    return Rating.objects.filter(exchange__in=usable_exchanges(persona)).exclude(by_blocked_user | by_blocked_player)


def eligible_corrections(persona: Persona) -> QuerySet[Correction]:
    """A persona's corrections that may train it: moderated like ratings (the exchange usable, the
    correction not excluded, its author not blocked)."""
    by_blocked_user = Q(user__isnull=False) & _blocked_user(OuterRef("user"))
    by_blocked_player = Q(user__isnull=True) & _blocked_player(OuterRef("player_name"))
    return Correction.objects.filter(exchange__in=usable_exchanges(persona), excluded_from_training=False).exclude(
        by_blocked_user | by_blocked_player
    )


def eligible_pairwise_votes(persona: Persona) -> QuerySet[PairwiseVote]:
    usable = usable_exchanges(persona)
    return (
        PairwiseVote.objects.filter(left__in=usable, right__in=usable, outcome__in=["left", "right"])
        .exclude(Q(voter__isnull=False) & _blocked_user(OuterRef("voter")))
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


PLAYER_MASK = "_player_"


def reply_key(completion: str, names: re.Pattern[str] | None) -> str:
    """What makes two replies the same reply: the words, any player's name masked."""
    text = names.sub(PLAYER_MASK, completion) if names else completion
    return " ".join(text.lower().split())


def names_pattern(names: set[str]) -> re.Pattern[str] | None:
    names = {n for n in names if n}
    if not names:
        return None
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(r"(?<!\w)(?:" + alternatives + r")(?!\w)", re.IGNORECASE)


def cap_copies(examples: list[Example], names: re.Pattern[str] | None, max_copies: int) -> list[Example]:
    """Keep at most ``max_copies`` of each reply (0: all), so one frequent reply cannot drown the rest."""
    if max_copies <= 0:
        return examples
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for ex in examples:
        key = reply_key(ex.completion, names)
        seen[key] += 1
        if seen[key] <= max_copies:
            kept.append(ex)
    return kept


def dataset_build(
    *,
    persona: Persona,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    max_ratings: int = 20000,
    max_copies_per_reply: int = 0,
) -> DatasetSnapshot:
    ratings = list(
        eligible_ratings(persona)
        .select_related("exchange")
        .order_by("-updated_at", "-pk")
        .only("pk", "score", "exchange__id", "exchange__prompt", "exchange__raw_text", "exchange__player_name")[
            :max_ratings
        ]
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
        Example(str(xid), ex.prompt, ex.raw_text, net[xid] > 0, ex.player_name, ex.created_at)
        for xid, ex in exchanges.items()
        if net[xid] != 0
    ]
    examples.sort(key=lambda e: e.order)
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

    # Corrections: what a player wrote is a liked reply to the prompt the model saw.
    corrections = list(eligible_corrections(persona).select_related("exchange").order_by("exchange__created_at", "pk"))
    train_corrections = []
    for c in corrections:
        ex = Example(str(c.exchange_id), c.exchange.prompt, c.text, True, c.exchange.player_name, c.exchange.created_at)
        (heldout.liked if is_heldout(ex.prompt, heldout_fraction) else train_corrections).append(ex)

    # The model writes any player's name (not only the asker's): mask every name seen.
    heldout.player_names = {ex.player for ex in examples if ex.player}
    names = names_pattern(heldout.player_names)
    n_liked, n_disliked = len(train_liked), len(train_disliked)
    train_liked = cap_copies(train_liked, names, max_copies_per_reply)
    train_disliked = cap_copies(train_disliked, names, max_copies_per_reply)
    copies_dropped = n_liked - len(train_liked) + n_disliked - len(train_disliked)
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
        sft=[{"prompt": e.prompt, "completion": e.completion} for e in train_liked + train_corrections],
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
        "train_copies_dropped": copies_dropped,
        "train_pairs": len(train_pairs),
        "heldout_liked": len(heldout.liked),
        "heldout_disliked": len(heldout.disliked),
        "heldout_pairs": len(heldout.pairs),
        "pairwise_votes": len(votes),
        "corrections": len(corrections),
        "train_corrections": len(train_corrections),
        "desirable_weight": desirable,
        "undesirable_weight": undesirable,
    }
    return DatasetSnapshot(
        rating_ids,
        sorted(v.pk for v in votes),
        train,
        heldout,
        counts,
        correction_ids=sorted(c.pk for c in corrections),
    )


def _auc(pos: Sequence[float], neg: Sequence[float]) -> float | None:
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def heldout_ranking(score: Callable[[Sequence[tuple[str, str]]], list[float]], heldout: HeldOut) -> dict[str, Any]:
    """How well ``score`` (higher: better) ranks the held-out liked replies above the disliked ones.

    ``auc``: the chance that a random liked reply scores above a random disliked one, with the
    same-prompt pairs counted in too (each weighs like one pair inside the AUC).
    """
    liked = score([(e.prompt, e.completion) for e in heldout.liked])
    disliked = score([(e.prompt, e.completion) for e in heldout.disliked])
    out: dict[str, Any] = {"liked": liked, "disliked": disliked, "pair_accuracy": None}
    auc = _auc(liked, disliked)
    if heldout.pairs:
        chosen = score([(p["prompt"], p["chosen"]) for p in heldout.pairs])
        rejected = score([(p["prompt"], p["rejected"]) for p in heldout.pairs])
        wins = sum((c > r) + 0.5 * (c == r) for c, r in zip(chosen, rejected))
        out["pair_accuracy"] = round(wins / len(chosen), 4)
        auc_pairs = len(liked) * len(disliked)
        auc = (((auc or 0) * auc_pairs) + wins) / (auc_pairs + len(chosen))
    out["auc"] = None if auc is None else round(auc, 4)
    return out
