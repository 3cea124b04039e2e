"""Speed of the three paths issue 13 targets, driven through the she_lora library on random factors.

Like TenSEAL's benchmark tests, each case is a parametrized table (path x size) that runs once as a
plain test by default (``--benchmark-disable``) and is timed with ``--benchmark-enable``. The
paper-scale sizes are ``slow``::

    pytest tests/bench/test_bench_library.py -m slow --benchmark-enable -s

Targets (paper scale, one thread, CPU time on a 2-core machine):

- ``test_flexlora_aggregate[50x3200-rank32]``: 50 clients of ranks 8..32 into one 3200 x 3200 module,
  kept at the largest client rank (what a server broadcasts): <= 2 s;
- ``test_server_lift_aggregate[paper]``: the server's aggregation of a 4-client server_lift round on
  the cost_public_bench shapes (104 LoRA pairs, A 4 x 3200, budget 0.125 %): <= 3 s;
- ``test_client_lift_round[paper]``: protect x 4, aggregate, one client's finalize: <= 2 s.

``extra_info`` holds the CPU seconds of one call (``cpu_s``) next to the wall time pytest-benchmark
reports: on a shared machine CPU time is the comparable one. The lift cases run with one and with
two forked workers per party (``-w1``, ``-w2``): for those, CPU time counts only the parent process,
so compare their wall times, on an otherwise idle machine.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from benchmark.asv_bench import rounds
from she_lora.lowrank import aggregate_lowrank, relative_error

SIZES = {
    "small": {"spec": rounds.SMALL, "flexlora": {"n_clients": 8, "dim": 512}},
    "paper": {"spec": rounds.COST_PUBLIC_BENCH, "flexlora": rounds.FLEXLORA_50},
}
PAPER = pytest.mark.slow


@pytest.fixture(autouse=True)
def _paper_scale_on_request(request: pytest.FixtureRequest) -> None:
    """Paper-scale cases take seconds each: run them with ``-m slow`` (or SHEBENCH_SLOW=1)."""
    if "paper" in request.node.name or "50x3200" in request.node.name:
        if "slow" not in (request.config.getoption("markexpr") or "") and not os.environ.get("SHEBENCH_SLOW"):
            pytest.skip("paper scale: run with -m slow")


def _cpu(benchmark: Any, fn: Any) -> Any:
    """Run ``fn`` under the benchmark once per round and record its CPU seconds."""
    def timed() -> Any:
        c0 = time.process_time()
        out = fn()
        cpu = time.process_time() - c0
        benchmark.extra_info["cpu_s"] = min(cpu, benchmark.extra_info.get("cpu_s", cpu))
        return out
    return benchmark.pedantic(timed, rounds=1, iterations=1)


FLEX = [pytest.param("small", None, id="8x512-full"), pytest.param("small", 8, id="8x512-rank8"),
        pytest.param("paper", None, id="50x3200-full", marks=PAPER), pytest.param("paper", 32, id="50x3200-rank32", marks=PAPER)]


@pytest.mark.benchmark(group="issue13-flexlora")
@pytest.mark.parametrize(("size", "rank"), FLEX)
def test_flexlora_aggregate(benchmark: Any, size: str, rank: int | None) -> None:
    terms = rounds.flexlora_terms(**SIZES[size]["flexlora"])
    benchmark.extra_info.update(stacked_rank=sum(a.shape[0] for _, _, a in terms), kept=rank or "all")
    out = _cpu(benchmark, lambda: aggregate_lowrank(terms, rank=rank))
    if size == "small":
        full = aggregate_lowrank(terms)
        ref = full if rank is None else full.truncate(rank)
        assert relative_error(out.dense(), ref.dense()) < 1e-6


WORKERS = [1, 2]  # forked processes per party: one core, or both cores of this machine


@pytest.fixture(scope="module", params=[pytest.param(("small", w), id=f"small-w{w}") for w in WORKERS]
                + [pytest.param(("paper", w), id=f"paper-w{w}", marks=PAPER) for w in WORKERS])
def server_round(request: pytest.FixtureRequest) -> tuple[str, rounds.LibraryRound, list]:
    size, workers = request.param
    if size == "paper" and "slow" not in (request.config.getoption("markexpr") or "") and not os.environ.get("SHEBENCH_SLOW"):
        pytest.skip("paper scale: run with -m slow")
    r = rounds.build_round("server_lift", SIZES[size]["spec"], n_workers=workers)
    return size, r, r.protect_all()


@pytest.mark.benchmark(group="issue13-server-lift")
def test_server_lift_aggregate(benchmark: Any, server_round: tuple[str, rounds.LibraryRound, list]) -> None:
    size, r, uploads = server_round
    benchmark.extra_info.update(size=size, modules=len(r.plan.shapes), clients=len(uploads), up_bytes=r.bytes_up(uploads),
                                bands=len(r.plan.bands), planes=[b.planes for b in r.plan.bands])
    message = _cpu(benchmark, lambda: r.aggregate(uploads))
    fused = r.finalize(message, rank=None)
    name = sorted(fused)[0]
    ref = r.reference([name])
    assert relative_error(fused[name].dense(), ref[name]) < 1e-5


@pytest.mark.benchmark(group="issue13-client-lift")
@pytest.mark.parametrize("workers", WORKERS, ids=[f"w{w}" for w in WORKERS])
@pytest.mark.parametrize("size", ["small", pytest.param("paper", marks=PAPER)])
def test_client_lift_round(benchmark: Any, size: str, workers: int) -> None:
    r = rounds.build_round("client_lift", SIZES[size]["spec"], n_workers=workers)
    rank = max(r.plan.members[i].rank for i in r.plan.members)
    parts: dict[str, float] = {}

    def round_trip() -> Any:
        c0 = time.process_time()
        uploads = r.protect_all()
        c1 = time.process_time()
        message = r.aggregate(uploads)
        c2 = time.process_time()
        fused = r.finalize(message, rank=rank)
        parts.update(protect_cpu_s=c1 - c0, aggregate_cpu_s=c2 - c1, finalize_cpu_s=time.process_time() - c2,
                     up_bytes=r.bytes_up(uploads))
        return fused

    fused = _cpu(benchmark, round_trip)
    benchmark.extra_info.update(parts)
    name = sorted(fused)[0]
    ref = r.reference([name])
    assert relative_error(fused[name].dense(), _truncate(ref[name], rank)) < 1e-5


def _truncate(dense: Any, rank: int) -> Any:
    import torch

    u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]
