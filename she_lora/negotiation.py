"""Global HE-subset negotiation: clients' top-k column lists -> ONE ordered global list per module.

Client i sends its k_i most sensitive columns (as OPE codes or plain indices), best first, and its
scores only if asked to. The server ranks candidates three ways,

- Common: how many clients listed the column (descending),
- Sensitivity: the highest score any client gave it (or, without scores, its best list position,
  then how many listed it),
- Tier t: the columns of the clients whose budget is exactly k_t, by their lowest score among those
  clients (or, without scores, by how many of them listed it, then worst position): what that tier
  as a whole cares about,

then walks the distinct budgets k_1 < k_2 < ... and, for each increment lambda = k_t - k_{t-1}, takes
floor(a lambda) new columns from the tier list, floor(b lambda) from Common and the rest from
Sensitivity, skipping columns already chosen (and continuing down the other lists if one runs dry).
The default shares (a, b, c) = (1/2, 1/4, 1/4) put each tier's own choices first; the paper tunes
them per tier by Bayesian optimisation of its Eq. 14 (``she_lora.negotiation_gp``, opt-in).

The result G is an ordered list whose prefixes nest: client i encrypts G[:k_i]. Order is kept end to
end (lists, never sets). An existing prefix (an earlier round's G) is kept and only extended.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_SHARES = (0.5, 0.25, 0.25)


@dataclass(frozen=True)
class TopK:
    """One client's message for one module: column codes, most sensitive first (scores optional)."""

    codes: tuple[int, ...]
    scores: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(set(self.codes)) != len(self.codes):
            raise ValueError("negotiation: a client's top-k list repeats a column")
        if self.scores is not None and len(self.scores) != len(self.codes):
            raise ValueError("negotiation: scores and codes differ in length")


Shares = tuple[float, float, float]


def check_shares(shares: Sequence[float]) -> None:
    if len(shares) != 3 or abs(sum(shares) - 1.0) > 1e-9 or min(shares) < 0:
        raise ValueError(f"negotiation shares must be 3 numbers >= 0 that sum to 1, got {tuple(shares)}")


@dataclass(frozen=True)
class Rankings:
    """One module's candidate orders, built once from the clients' lists: Common, Sensitivity and
    one tier list per distinct budget k."""

    common: list[int]
    sensitive: list[int]
    tiers: dict[int, list[int]]

    @classmethod
    def of(cls, lists: Sequence[TopK]) -> Rankings:
        ks = sorted({len(t.codes) for t in lists})
        return cls(_common(lists), _sensitive(lists), {k: _tier(lists, k) for k in ks})


def extend_to(selected: list[int], chosen: set[int], k: int, rankings: Rankings, shares: Shares) -> None:
    """Grow ``selected`` (in place) to length k: the increment split by ``shares`` over the tier-k,
    Common and Sensitivity lists, skipping columns already chosen."""
    lam = k - len(selected)
    if lam <= 0:
        return
    quotas = [math.floor(shares[0] * lam), math.floor(shares[1] * lam)]
    quotas.append(lam - sum(quotas))
    sources = [rankings.tiers.get(k, []), rankings.common, rankings.sensitive]
    for source, quota in zip(sources, quotas):
        _take(source, quota, selected, chosen)
    for source in sources:  # a list ran dry: fill from the others, in the same order
        _take(source, k - len(selected), selected, chosen)


def merge_global_list(
    lists: Sequence[TopK], prefix: Sequence[int] = (), shares: tuple[float, float, float] = DEFAULT_SHARES
) -> list[int]:
    """The ordered global list, of length max(k_i) (or the prefix, if that is longer already)."""
    check_shares(shares)
    selected = list(prefix)
    chosen = set(selected)
    if len(chosen) != len(selected):
        raise ValueError("negotiation: the existing global list repeats a column")
    rankings = Rankings.of(lists)
    for k in sorted(rankings.tiers):
        extend_to(selected, chosen, k, rankings, shares)
    return selected


def _take(source: list[int], quota: int, selected: list[int], chosen: set[int]) -> None:
    for code in source:
        if quota <= 0:
            return
        if code not in chosen:
            selected.append(code)
            chosen.add(code)
            quota -= 1


def _positions(lists: Sequence[TopK]) -> dict[int, list[int]]:
    pos: dict[int, list[int]] = {}
    for t in lists:
        for p, code in enumerate(t.codes):
            pos.setdefault(code, []).append(p)
    return pos


def _common(lists: Sequence[TopK]) -> list[int]:
    pos = _positions(lists)
    return sorted(pos, key=lambda c: (-len(pos[c]), min(pos[c]), c))


def _sensitive(lists: Sequence[TopK]) -> list[int]:
    if all(t.scores is not None for t in lists):
        best: dict[int, float] = {}
        for t in lists:
            for code, s in zip(t.codes, t.scores or ()):
                best[code] = max(best.get(code, -math.inf), s)
        return sorted(best, key=lambda c: (-best[c], c))
    pos = _positions(lists)
    return sorted(pos, key=lambda c: (min(pos[c]), -len(pos[c]), c))


def _tier(lists: Sequence[TopK], k: int) -> list[int]:
    members = [t for t in lists if len(t.codes) == k]
    if all(t.scores is not None for t in members):
        worst: dict[int, float] = {}
        for t in members:
            for code, s in zip(t.codes, t.scores or ()):
                worst[code] = min(worst.get(code, math.inf), s)
        return sorted(worst, key=lambda c: (-worst[c], c))
    pos = _positions(members)
    return sorted(pos, key=lambda c: (-len(pos[c]), max(pos[c]), c))
