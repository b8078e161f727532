"""Bradley–Terry ratings of NPC versions from battle votes, with bootstrap 95% intervals.

The model: version i beats version j with probability sigmoid(θ_i − θ_j). A tie counts as half a
win for each side. ``fit`` finds θ by Newton's method on the log-likelihood with a small ridge
penalty (it keeps a version that never won, or never lost, at a finite rating, and pins the
otherwise free overall level at zero). Ratings are shown on the Elo scale (400/ln 10 per unit
of θ, centred on 1000), as Chatbot Arena does. ``bootstrap`` refits on the votes resampled with
replacement; the 2.5th and 97.5th percentiles of each version's rating are its interval.

Pure numpy; the callers turn rows into ``Vote`` tuples.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

ELO_SCALE = 400 / math.log(10)
ELO_BASE = 1000.0


@dataclass(frozen=True)
class Vote:
    """One battle: ``a`` against ``b``; ``score`` is a's share of the win (1, 0 or 0.5 for a tie)."""

    a: Hashable
    b: Hashable
    score: float


@dataclass(frozen=True)
class Rating:
    item: Hashable
    rating: float  # Elo scale
    low: float  # bootstrap 95% interval
    high: float
    wins: float  # ties count half
    losses: float
    battles: int


def fit(votes: Sequence[Vote], items: Sequence[Hashable], *, ridge: float = 0.01, iterations: int = 50) -> np.ndarray:
    """θ for ``items`` (in that order) from ``votes``: Newton iterations on the penalised log-likelihood."""
    index = {item: k for k, item in enumerate(items)}
    n = len(items)
    a = np.array([index[v.a] for v in votes], dtype=np.int64)
    b = np.array([index[v.b] for v in votes], dtype=np.int64)
    s = np.array([v.score for v in votes], dtype=np.float64)
    theta = np.zeros(n)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(theta[b] - theta[a]))  # P(a beats b)
        residual = s - p
        grad = np.bincount(a, residual, n) - np.bincount(b, residual, n) - ridge * theta
        w = p * (1.0 - p)
        hessian = -ridge * np.eye(n)
        np.add.at(hessian, (a, a), -w)
        np.add.at(hessian, (b, b), -w)
        np.add.at(hessian, (a, b), w)
        np.add.at(hessian, (b, a), w)
        step = np.linalg.solve(hessian, grad)
        theta = theta - step
        if np.max(np.abs(step)) < 1e-9:
            break
    return theta


def to_elo(theta: np.ndarray) -> np.ndarray:
    return ELO_BASE + ELO_SCALE * (theta - theta.mean())


def ratings(votes: Sequence[Vote], *, rounds: int = 200, seed: int = 0) -> list[Rating]:
    """Every version that took part, best first, with its bootstrap interval and record."""
    items = sorted({v.a for v in votes} | {v.b for v in votes}, key=repr)
    if not items:
        return []
    point = to_elo(fit(votes, items))
    rng = np.random.default_rng(seed)
    draws = np.empty((rounds, len(items)))
    for r in range(rounds):
        sample = [votes[k] for k in rng.integers(0, len(votes), len(votes))]
        draws[r] = to_elo(fit(sample, items))
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    record = {item: [0.0, 0.0, 0] for item in items}
    for v in votes:
        record[v.a][0] += v.score
        record[v.a][1] += 1 - v.score
        record[v.b][0] += 1 - v.score
        record[v.b][1] += v.score
        record[v.a][2] += 1
        record[v.b][2] += 1
    out = [
        Rating(
            item=item,
            rating=round(float(point[k]), 1),
            low=round(float(min(low[k], point[k])), 1),
            high=round(float(max(high[k], point[k])), 1),
            wins=record[item][0],
            losses=record[item][1],
            battles=record[item][2],
        )
        for k, item in enumerate(items)
    ]
    return sorted(out, key=lambda r: -r.rating)


def wilson(successes: float, n: float, z: float = 1.96) -> tuple[float, float, float]:
    """(share, low, high): the Wilson 95% interval of a share, sound for small counts too."""
    if n <= 0:
        return 0.0, 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)
