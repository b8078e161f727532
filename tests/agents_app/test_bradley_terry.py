"""Bradley–Terry ratings of versions from battle votes, and the intervals around them."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from agents_app.bradley_terry import ELO_SCALE, Vote, fit, ratings, wilson

STRENGTHS = {"v1": -1.0, "v2": 0.0, "v3": 0.6, "v4": 1.5}  # the known order: v4 > v3 > v2 > v1


def synthetic_votes(n: int, seed: int = 0, tie_share: float = 0.1) -> list[Vote]:
    """Battles between random pairs, decided by the Bradley–Terry model with STRENGTHS (some ties)."""
    rng = random.Random(seed)
    names = list(STRENGTHS)
    votes = []
    for _ in range(n):
        a, b = rng.sample(names, 2)
        if rng.random() < tie_share:
            votes.append(Vote(a, b, 0.5))
            continue
        p = 1 / (1 + math.exp(STRENGTHS[b] - STRENGTHS[a]))
        votes.append(Vote(a, b, 1.0 if rng.random() < p else 0.0))
    return votes


def test_the_fit_recovers_the_known_order_and_the_gaps_between_strengths():
    votes = synthetic_votes(3000)
    theta = fit(votes, list(STRENGTHS))
    assert list(np.argsort(-theta)) == [3, 2, 1, 0]
    truth = np.array(list(STRENGTHS.values()))
    # Ties pull the strengths together a little; the gaps stay close to the truth.
    assert np.allclose(theta - theta.mean(), truth - truth.mean(), atol=0.25)


def test_ratings_rank_best_first_with_intervals_that_hold_the_point_and_separate_the_ends():
    board = ratings(synthetic_votes(1500), rounds=100)
    assert [r.item for r in board] == ["v4", "v3", "v2", "v1"]
    for r in board:
        assert r.low <= r.rating <= r.high
    best, worst = board[0], board[-1]
    assert best.low > worst.high, "2.5 units of strength apart must not overlap"
    assert sum(r.battles for r in board) == 2 * 1500
    # The Elo scale: the gap is 400/ln 10 per unit of strength (about 2.5 units here, ties shrink it a bit).
    assert 1.8 * ELO_SCALE < best.rating - worst.rating < 2.8 * ELO_SCALE


def test_few_votes_give_wide_intervals_and_many_give_narrow_ones():
    few = {r.item: r.high - r.low for r in ratings(synthetic_votes(60, seed=1), rounds=100)}
    many = {r.item: r.high - r.low for r in ratings(synthetic_votes(2000, seed=1), rounds=100)}
    assert all(many[k] < few[k] for k in STRENGTHS)


def test_a_tie_is_half_a_win_for_each_side():
    board = {r.item: r for r in ratings([Vote("a", "b", 0.5)] * 10 + [Vote("a", "b", 1.0)] * 2, rounds=20)}
    assert (board["a"].wins, board["a"].losses) == (7.0, 5.0)
    assert (board["b"].wins, board["b"].losses) == (5.0, 7.0)
    assert board["a"].rating > board["b"].rating
    even = {r.item: r.rating for r in ratings([Vote("a", "b", 0.5)] * 10, rounds=20)}
    assert even["a"] == pytest.approx(even["b"])


def test_a_version_that_never_lost_still_gets_a_finite_rating():
    board = ratings([Vote("new", "old", 1.0)] * 5, rounds=20)
    assert [r.item for r in board] == ["new", "old"]
    assert all(math.isfinite(r.rating) and math.isfinite(r.low) and math.isfinite(r.high) for r in board)


def test_no_votes_no_board():
    assert ratings([]) == []


def test_the_wilson_interval_holds_the_share_and_narrows_with_more_counts():
    share, low, high = wilson(30, 100)
    assert share == 0.3 and low < 0.3 < high
    assert wilson(300, 1000)[2] - wilson(300, 1000)[1] < high - low
    assert wilson(0, 0) == (0.0, 0.0, 1.0)
    assert wilson(0, 10)[1] == 0.0 and wilson(10, 10)[2] == 1.0
