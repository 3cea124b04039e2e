"""Time per probe case of the span attacks (DAGER, FedSpy, UTR), like ``benchmark/asv_bench/attacks.py``.

Each case runs once as a plain test by default (``--benchmark-disable``) on the ``tiny`` shape; the
SmolLM2-shaped cases (random-init, SmolLM2-135M's shape, rank 256: issue 30's targets) take seconds to
minutes each and are ``slow``::

    pytest tests/bench/test_bench_attacks.py -m slow --benchmark-enable -s

Targets on one core: DAGER <= 10 s at batch 4 and <= 30 s at 16, FedSpy <= 15 s at batch 4, UTR
<= 60 s at batch 16, adaptive within 2x of naive. ``extra_info`` holds the CPU seconds of the case
(``cpu_s``): on a shared machine that is the comparable number.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from attacks.dager import DAGER
from attacks.fedspy import FedSpy
from attacks.utr import UTR
from benchmark.asv_bench import spanviews

ATTACKS = {"dager": DAGER, "fedspy": FedSpy, "utr": UTR}
SLOW = pytest.mark.slow


def _slow_on_request(request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.getoption("markexpr") or "") and not os.environ.get("SHEBENCH_SLOW"):
        pytest.skip("SmolLM2 shape: run with -m slow")


@pytest.fixture(scope="module")
def views(request: pytest.FixtureRequest) -> dict:
    """Views built on first use, one per (shape, batch, variant), kept for the module."""
    return {}


def _view(views: dict, shape: str, batch: int, variant: str) -> Any:
    key = (shape, batch, variant)
    if key not in views:
        extra = {"b_std": 0.02, "hide": 0.05, "permute": 16} if variant == "permuted" else {}
        views[key] = spanviews.case(shape, batch, **extra)
    return views[key]


def _case(benchmark: Any, attack: str, view: Any, mode: str) -> Any:
    def timed() -> Any:
        spanviews.forget_vocabulary()  # each case pays for its vocabulary pass
        c0 = time.process_time()
        rec = ATTACKS[attack](ATTACKS[attack].Params(mode=mode)).reconstruct(view)
        cpu = time.process_time() - c0
        benchmark.extra_info["cpu_s"] = min(cpu, benchmark.extra_info.get("cpu_s", cpu))
        return rec
    return benchmark.pedantic(timed, rounds=1, iterations=1)


CASES = ([pytest.param("tiny", a, b, id=f"tiny-{a}-b{b}") for a in ATTACKS for b in (2, 4)]
         + [pytest.param("smollm2", a, b, id=f"smollm2-{a}-b{b}", marks=SLOW) for a in ATTACKS for b in (4, 16)])


@pytest.mark.benchmark(group="issue30-span-attacks")
@pytest.mark.parametrize(("shape", "attack", "batch"), CASES)
def test_span_attack_case(benchmark: Any, request: pytest.FixtureRequest, views: dict, shape: str, attack: str,
                          batch: int) -> None:
    if shape != "tiny":
        _slow_on_request(request)
    view = _view(views, shape, batch, "clear")
    benchmark.extra_info.update(shape=shape, attack=attack, batch=batch, rank=spanviews.SHAPES[shape].rank)
    rec = _case(benchmark, attack, view, "naive")
    assert rec.status == "ok" and rec.token_ids


ADAPTIVE = ([pytest.param("tiny", m, 2, id=f"tiny-{m}-b2") for m in ("naive", "adaptive")]
            + [pytest.param("smollm2", m, b, id=f"smollm2-{m}-b{b}", marks=SLOW) for m in ("naive", "adaptive") for b in (4, 8)])


@pytest.mark.benchmark(group="issue30-adaptive")
@pytest.mark.parametrize(("shape", "mode", "batch"), ADAPTIVE)
def test_dager_on_a_permuted_view(benchmark: Any, request: pytest.FixtureRequest, views: dict, shape: str, mode: str,
                                  batch: int) -> None:
    """A SHE-LoRA-like view of a later round: the adaptive mode refits trimmed distances."""
    if shape != "tiny":
        _slow_on_request(request)
    view = _view(views, shape, batch, "permuted")
    benchmark.extra_info.update(shape=shape, mode=mode, batch=batch)
    rec = _case(benchmark, "dager", view, mode)
    assert rec.status == "ok"
