"""A canary's trial: does the candidate that answers a share of live asks do as well as the active version?

Two records, both counted since the trial began (the canary's ``status_changed_at``), each with a
95% interval (``agents_app.bradley_terry.wilson``):

- thumbs: the share of thumbs up among the ratings of each version's replies (raters a moderator
  blocked left out). The active version's, if it has fewer than the minimum in that time, from
  all its ratings.
- battles: the canary's share of wins in battles against the active version (ties count half).

After ``VOYAGER_CANARY_MIN_RATINGS`` ratings of the canary's replies, the trial ends:

- withdrawn when clearly worse: its thumbs interval lies wholly below the active's, or its battle
  interval lies wholly below one half;
- promoted when no worse within the intervals: its thumbs interval reaches the active's share,
  and (if it fought any) its battle interval reaches one half;
- otherwise it goes on until the figures say one or the other.

The transitions are ``agents_app.adapters.canary_conclude``'s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from django.conf import settings
from django.db.models import Q

from agents_app import adapters as lifecycle
from agents_app.bradley_terry import wilson
from agents_app.models import AdapterVersion, Battle, Persona, PlayerLink, RaterBlock, Rating

SCORES = {Battle.Outcome.LEFT: 1.0, Battle.Outcome.RIGHT: 0.0, Battle.Outcome.TIE: 0.5}


@dataclass
class Record:
    wins: float
    n: int
    share: float
    low: float
    high: float

    @classmethod
    def of(cls, wins: float, n: int) -> Record:
        share, low, high = wilson(wins, n)
        return cls(wins=wins, n=n, share=round(share, 4), low=round(low, 4), high=round(high, 4))


@dataclass
class Trial:
    canary: Record
    active: Record
    battles: Record
    decision: str  # "promote", "withdraw" or "wait"
    reason: str

    def figures(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "decision"}


def _counted_ratings():
    """Ratings whose raters no moderator blocked (the same people training leaves out)."""
    blocked_names = RaterBlock.objects.filter(user__isnull=True).values("player_name")
    blocked_users = RaterBlock.objects.filter(user__isnull=False).values("user")
    linked_blocked = PlayerLink.objects.filter(verified_at__isnull=False, player_name__in=blocked_names).values("user")
    return Rating.objects.exclude(Q(user__in=blocked_users) | Q(user__in=linked_blocked)).exclude(
        Q(user__isnull=True) & Q(player_name__in=blocked_names)
    )


def thumbs(persona: Persona, version_id: int | None, since=None) -> Record:
    ratings = _counted_ratings().filter(exchange__persona=persona, exchange__adapter_version_id=version_id)
    if since is not None:
        ratings = ratings.filter(exchange__created_at__gte=since)
    n = ratings.count()
    return Record.of(ratings.filter(score=1).count(), n)


def battle_record(persona: Persona, version_id: int, other_id: int | None, since=None) -> Record:
    """``version_id``'s wins against ``other_id`` (None: the base model) in decided battles."""
    battles = Battle.objects.filter(persona=persona, outcome__in=list(SCORES)).select_related("left", "right")
    if since is not None:
        battles = battles.filter(created_at__gte=since)
    wins, n = 0.0, 0
    for battle in battles:
        sides = (battle.left.adapter_version_id, battle.right.adapter_version_id)
        if sides == (version_id, other_id):
            wins, n = wins + SCORES[battle.outcome], n + 1
        elif sides == (other_id, version_id):
            wins, n = wins + 1 - SCORES[battle.outcome], n + 1
    return Record.of(wins, n)


def canary_trial(persona: Persona, canary: AdapterVersion, *, min_ratings: int | None = None) -> Trial:
    """The canary's figures against the active version's, and what they say (nothing is changed)."""
    minimum = settings.VOYAGER_CANARY_MIN_RATINGS if min_ratings is None else min_ratings
    since = canary.status_changed_at
    active_id = persona.active_adapter_id
    mine = thumbs(persona, canary.pk, since)
    theirs = thumbs(persona, active_id, since)
    if theirs.n < minimum:
        theirs = thumbs(persona, active_id)
    fights = battle_record(persona, canary.pk, active_id, since)

    def trial(decision: str, reason: str) -> Trial:
        return Trial(canary=mine, active=theirs, battles=fights, decision=decision, reason=reason)

    if mine.n < minimum:
        return trial("wait", f"{mine.n} of the {minimum} ratings its trial needs")
    if mine.high < theirs.low:
        return trial("withdraw", f"thumbs up {mine.share:.0%} (at most {mine.high:.0%}) against {theirs.share:.0%}")
    if fights.n and fights.high < 0.5:
        return trial("withdraw", f"won {fights.share:.0%} of {fights.n} battles (at most {fights.high:.0%})")
    if mine.high >= theirs.share and (not fights.n or fights.high >= 0.5):
        return trial("promote", f"thumbs up {mine.share:.0%} against {theirs.share:.0%}, no worse within the interval")
    return trial("wait", "neither clearly worse nor yet as good: more ratings decide")


def canary_review(*, persona: Persona, min_ratings: int | None = None) -> Trial | None:
    """Review the persona's canary; promote or withdraw it when the figures decide. None: no canary."""
    persona = Persona.objects.select_related("canary_adapter").get(pk=persona.pk)
    canary = persona.canary_adapter
    if canary is None or canary.status != AdapterVersion.Status.CANARY:
        return None
    trial = canary_trial(persona, canary, min_ratings=min_ratings)
    if trial.decision != "wait":
        lifecycle.canary_conclude(adapter=canary, decision=trial.decision, figures=trial.figures())
    return trial


def canaries_review() -> dict[str, str]:
    """Every persona's canary reviewed (the periodic task): slug → decision."""
    out = {}
    for persona in Persona.objects.filter(canary_adapter__isnull=False).order_by("pk"):
        trial = canary_review(persona=persona)
        if trial is not None:
            out[persona.slug] = trial.decision
    return out
