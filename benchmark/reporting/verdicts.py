"""Verdicts against a paper's figures: reproduced, refuted, not comparable, or inconclusive.

The rule, and why each part:

- *reproduced* only by an equivalence test (TOST) within a margin fixed before the run. Failing to
  reject a difference is not evidence of sameness: a wide interval fails to reject everything.
- *refuted* only by a test of difference beyond the margin (the 95% interval lies wholly outside the
  paper's value +- margin), and only where our setting matches the paper's. A difference measured in
  another setting (another noise level, tokens per batch against the rank) is *not comparable*, and
  the caller names the mismatch.
- Holm's correction over the table: the equivalence tests of the comparable figures form one family,
  the tests of difference another (for one figure at most one of the two can reject, since the 90%
  interval lies inside the 95% one). A figure that is not comparable is not tested and does not
  enlarge the families.
- otherwise *inconclusive*.

Intervals and tests are those of ``benchmark.reporting.clustered`` (seeds as clusters); a sample whose
seed means are all equal (every case 0.0, say) is tested by an exact bound that depends on the number
of seeds, so a zero-width interval does not by itself refute anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from benchmark.reporting.clustered import ClusterSample, difference, holm, tost
from benchmark.reporting.stats import Interval

REPRODUCED, REFUTED, INCONCLUSIVE, NOT_COMPARABLE = "reproduced", "refuted", "inconclusive", "not comparable"


@dataclass(frozen=True)
class Claim:
    """One of the paper's figures beside our sample of the same quantity: a level (mean ROUGE-1) or a
    contrast (paired differences against plain LoRA, with the paper's difference as ``paper``).
    ``mismatch`` names how our setting differs from the paper's; None where it matches."""

    sample: ClusterSample
    paper: float
    mismatch: str | None = None


@dataclass(frozen=True)
class Verdict:
    """A claim's verdict with its Holm-adjusted p-values (NaN where not tested) and our interval."""

    label: str
    p_equivalence: float
    p_difference: float
    interval: Interval


def verdicts(claims: Sequence[Claim], margin: float, alpha: float = 0.05, level: float = 0.95) -> list[Verdict]:
    """The rule (module docstring) over a table of claims, in their order. ``margin`` is in the units
    of the values (0.05 = 5 ROUGE-1 points) and must be fixed before the run."""
    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    tested = [c.mismatch is None for c in claims]
    p_eq = holm([tost(c.sample, c.paper, margin, alpha).p if t else math.nan for c, t in zip(claims, tested)])
    p_diff = holm([difference(c.sample, c.paper, margin, alpha).p if t else math.nan for c, t in zip(claims, tested)])
    out = []
    for claim, eq, diff in zip(claims, p_eq, p_diff):
        if claim.mismatch is not None:
            label = f"{NOT_COMPARABLE} ({claim.mismatch})"
        elif eq <= alpha:
            label = REPRODUCED
        elif diff <= alpha:
            label = REFUTED
        else:
            label = INCONCLUSIVE
        out.append(Verdict(label, float(eq), float(diff), claim.sample.interval(level)))
    return out


def rule_text(margin: float, alpha: float = 0.05) -> str:
    """The rule in one line, to print under a table of verdicts."""
    return (f"Verdicts (margin +-{margin:g}, fixed before the run; seeds are the clusters; Holm over the comparable "
            f"figures at {alpha:g}): *reproduced* when an equivalence test (TOST) puts ours within the margin of the "
            f"paper's; *refuted* when our {1 - alpha:.0%} interval lies wholly outside the paper's value +- margin and "
            "our setting matches the paper's; *not comparable* (reason given) when it does not; otherwise "
            "*inconclusive*. Intervals: design-effect Wilson on the seed means with t(seeds - 1); where every seed "
            "mean is equal, an exact bound from the number of seeds.")

