"""The arena's leaderboard: Bradley-Terry strengths of model versions from blind pairwise votes, on the Elo
scale, with bootstrap confidence intervals, and each version's win rate against its parent.

A battle is a label whose two answers came from two different versions (the labeling app's two-model mode,
or the arena). Ties and "both bad" count half a win to each side, as Chatbot Arena counts them. The fit is
Hunter's minorization-maximization for the Bradley-Terry model (2004), with one virtual tie of every version
against a fixed reference at 1000 so that a version that never won (or never lost) keeps a finite rating and
the scale is anchored. Ratings use Elo's scale: a 400-point gap means 10:1 odds of winning.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from neo.schemas import PreferenceRecord

ELO_BASE, ELO_SCALE, ELO_INIT = 10.0, 400.0, 1000.0  # Chatbot Arena's Elo scale
PRIOR_TIES = 1.0  # virtual ties of each version against the reference (keeps all ratings finite)
BOOTSTRAP_ROUNDS = 200
_REFERENCE = "\x00reference"


@dataclass(frozen=True)
class Battle:
    """One vote between two versions: ``winner`` is ``a``, ``b`` or ``tie``."""

    a: str
    b: str
    winner: str


@dataclass(frozen=True)
class Standing:
    version: str
    rating: float
    low: float  # 95% bootstrap interval of the rating
    high: float
    battles: int
    wins: float  # ties count half
    parent: str | None = None
    vs_parent: tuple[float, float, float, int] | None = None  # win rate, its 95% Wilson interval, battles

    @property
    def win_rate(self) -> float:
        return self.wins / self.battles if self.battles else 0.0


def battles_from_labels(labels: Iterable[PreferenceRecord]) -> list[Battle]:
    """Every label whose answers came from two different versions, as a battle (both bad = tie)."""
    out = []
    for label in labels:
        a, b = label.answer_a.model_version, label.answer_b.model_version
        if not a or not b or a == b:
            continue
        out.append(Battle(a, b, label.choice if label.choice in ("a", "b") else "tie"))
    return out


def fit_bradley_terry(battles: Sequence[Battle], iterations: int = 500, tol: float = 1e-10) -> dict[str, float]:
    """Elo-scale ratings of every version in ``battles`` (see the module docstring)."""
    wins: dict[str, float] = defaultdict(float)
    games: dict[tuple[str, str], float] = defaultdict(float)
    players = {_REFERENCE}
    for battle in battles:
        players |= {battle.a, battle.b}
        score_a = {"a": 1.0, "b": 0.0}.get(battle.winner, 0.5)
        wins[battle.a] += score_a
        wins[battle.b] += 1.0 - score_a
        games[battle.a, battle.b] += 1
        games[battle.b, battle.a] += 1
    for player in players - {_REFERENCE}:
        wins[player] += PRIOR_TIES / 2
        wins[_REFERENCE] += PRIOR_TIES / 2
        games[player, _REFERENCE] += PRIOR_TIES
        games[_REFERENCE, player] += PRIOR_TIES
    opponents: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for (i, j), n in games.items():
        opponents[i].append((j, n))
    strength = dict.fromkeys(players, 1.0)
    for _ in range(iterations):
        new = {}
        for i in players:
            denominator = sum(n / (strength[i] + strength[j]) for j, n in opponents[i])
            new[i] = wins[i] / denominator if denominator else strength[i]
        scale = new[_REFERENCE]  # the reference stays at 1 (rating 1000)
        new = {k: v / scale for k, v in new.items()}
        change = max(abs(math.log(new[k] / strength[k])) for k in players)
        strength = new
        if change < tol:
            break
    return {p: ELO_INIT + ELO_SCALE * math.log(s, ELO_BASE) for p, s in strength.items() if p != _REFERENCE}


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (ties as half successes)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def leaderboard(battles: Sequence[Battle], parents: Mapping[str, str | None] | None = None,
                rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> list[Standing]:
    """Versions by rating, best first, with bootstrap intervals (``rounds`` resamples of the battles) and,
    where ``parents`` names a version's parent, its win rate against that parent."""
    if not battles:
        return []
    ratings = fit_bradley_terry(battles)
    rng = random.Random(seed)
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        resampled = [battles[rng.randrange(len(battles))] for _ in battles]
        for version, rating in fit_bradley_terry(resampled).items():
            samples[version].append(rating)
    played: dict[str, int] = defaultdict(int)
    won: dict[str, float] = defaultdict(float)
    head: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for battle in battles:
        score_a = {"a": 1.0, "b": 0.0}.get(battle.winner, 0.5)
        for me, other, score in ((battle.a, battle.b, score_a), (battle.b, battle.a, 1.0 - score_a)):
            played[me] += 1
            won[me] += score
            head[me, other][0] += score
            head[me, other][1] += 1
    standings = []
    for version, rating in ratings.items():
        draws = sorted(samples[version]) or [rating]
        low, high = draws[int(0.025 * (len(draws) - 1))], draws[int(math.ceil(0.975 * (len(draws) - 1)))]
        parent = (parents or {}).get(version)
        vs_parent = None
        if parent is not None and head[version, parent][1]:
            score, n = head[version, parent]
            vs_parent = (score / n, *wilson(score, int(n)), int(n))
        standings.append(Standing(version, rating, min(low, rating), max(high, rating), played[version],
                                  won[version], parent, vs_parent))
    return sorted(standings, key=lambda s: -s.rating)
