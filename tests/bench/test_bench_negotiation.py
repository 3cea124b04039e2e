"""Speed of one SHE-LoRA negotiation, fixed shares against shares tuned to Eq. 14 (``gp``).

Shape of the default scenario: 30 layers x (q, v) of SmolLM2 (60 modules, 576 A-columns each), six
clients in three budget tiers (5/10/20 % -> k = 29/58/116). Runs once as a test by default; timed with
``pytest tests/bench/test_bench_negotiation.py --benchmark-enable -s``. Target: the gp negotiation
<= 1 s of CPU on this 2-core machine (``extra_info["cpu_s"]``; scikit-learn's import is excluded).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from test_she_lora_negotiation_gp import heterogeneous

from she_lora.negotiation_gp import NEGOTIATIONS


@pytest.mark.benchmark(group="she-lora-negotiation")
@pytest.mark.parametrize("scores", [False, True], ids=["ranks", "scores"])
@pytest.mark.parametrize("method", ["fixed", "gp"])
def test_negotiation(benchmark: Any, method: str, scores: bool) -> None:
    import skopt  # noqa: F401  (loaded before timing: scikit-learn's import takes seconds)

    names, messages = heterogeneous(60, 576, (29, 29, 58, 58, 116, 116), seed=0, scores=scores)

    def timed() -> Any:
        c0 = time.process_time()
        out = NEGOTIATIONS[method](messages, names, {}, random_state=(0, 1))
        benchmark.extra_info["cpu_s"] = time.process_time() - c0
        return out

    out = benchmark.pedantic(timed, rounds=1, iterations=1)
    benchmark.extra_info.update(eq14=out.objective, eq14_fixed=out.objective_fixed, shares=out.shares)
    assert out.objective >= out.objective_fixed
    assert all(len(out.lists[n]) == 116 for n in names)
