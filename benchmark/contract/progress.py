"""Progress from inside a long computation (an attack's decoding, label completion) to whoever runs it.

A case of a span attack can take minutes, during which the run's cell bar would stand still. The
harness opens ``reporting(show)`` around a reconstruction; code anywhere below calls ``tick(stage)``
as it works, with no argument threaded through every call. Outside ``reporting`` a tick does nothing,
so attacks run in tests or notebooks stay silent. The reporter lives in a context variable (one per
thread or task), not in a module global, so nested or concurrent runs never see each other's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class _Reporter:
    show: Callable[[str], None]
    every_s: float
    counts: dict[str, int] = field(default_factory=dict)
    last: float = float("-inf")


_CURRENT: ContextVar[_Reporter | None] = ContextVar("shebench_progress", default=None)


@contextmanager
def reporting(show: Callable[[str], None], every_s: float = 0.5) -> Iterator[None]:
    """Within the block, ``tick`` messages go to ``show`` (at most one every ``every_s`` seconds, plus
    the first one of each stage)."""
    token = _CURRENT.set(_Reporter(show, every_s))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def tick(stage: str, done: int | None = None, total: int | None = None) -> None:
    """Report that ``stage`` advanced: to ``done`` of ``total`` where known, else by one more step
    (counted per stage). Cheap, and a no-op unless a caller opened ``reporting``."""
    rep = _CURRENT.get()
    if rep is None:
        return
    first = stage not in rep.counts
    rep.counts[stage] = done if done is not None else rep.counts.get(stage, 0) + 1
    now = time.monotonic()
    if not first and now - rep.last < rep.every_s:
        return
    rep.last = now
    n = rep.counts[stage]
    rep.show(f"{stage} {n}/{total}" if total else f"{stage} {n}")
