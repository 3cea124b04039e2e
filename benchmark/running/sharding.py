"""Split one suite across processes: ``--shard K/N`` runs the K-th of N disjoint parts of its simulations.

Simulations are independent, so N processes, one core each, finish a suite about N times sooner.
Each shard is a run of its own (``<run id>-shard<K>of<N>``): a run folder has one writer (its
``run.lock``), one manifest and one rows file, so shards never share one. ``shebench report`` on the
N folders reads them as one run.

The split deals the simulations round-robin, taking them bucket by bucket (a bucket: one scenario
entry x defense, its seeds together, buckets in plan order) and carrying the turn on across buckets,
so each shard gets every defense's seeds in equal share (within one) rather than, with four defenses
and two shards, every other defense. It depends on the plan alone, never on timings: every shard of
one command, and every resume of it, sees the same partition (a split balanced by estimated seconds
would move whenever the reference rows do, and the shards write into results/reference themselves)."""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from typing import Any

from benchmark.config import ConfigError


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` with 1 <= K <= N into (K, N)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ConfigError(f"--shard expects K/N with 1 <= K <= N, e.g. 1/2 and 2/2; got {text!r}")
    return int(m.group(1)), int(m.group(2))


def shard_indices(buckets: Sequence[Hashable], k: int, n: int) -> list[int]:
    """Positions (in plan order) that shard ``k`` of ``n`` (1-based) runs, given each position's bucket."""
    if not 1 <= k <= n:
        raise ConfigError(f"--shard {k}/{n}: K must be in 1..N")
    first: dict[Hashable, int] = {}
    for i, b in enumerate(buckets):
        first.setdefault(b, i)
    dealt = sorted(range(len(buckets)), key=lambda i: (first[buckets[i]], i))
    return sorted(dealt[k - 1::n])


def group_bucket(group: Any) -> Hashable:
    return (group.scenario.name, group.defense.label)


def shard(groups: Sequence[Any], k: int, n: int) -> list[Any]:
    """The planned groups shard ``k`` of ``n`` runs, in plan order."""
    return [groups[i] for i in shard_indices([group_bucket(g) for g in groups], k, n)]


def shard_run_id(run_id: str, k: int, n: int) -> str:
    return f"{run_id}-shard{k}of{n}"
