"""SHE-LoRA cost benchmarks on random updates of real model shapes (pytest-benchmark).

By default (``--benchmark-disable``) each runs once at a small size as a plain test; the paper-scale
cases are ``slow``. Run them with timings, for example::

    pytest tests/bench/test_she_lora_bench.py -m slow --benchmark-enable -s

- ``test_server_lift_encrypt``: one client's encryption (protect) in server_lift on OpenLLaMA-3B
  shapes (26 layers x q_proj, v_proj, 3200 x 3200), tiers rank 8/16/24/32 with budgets
  0.125/0.25/0.8/1.6 %; target <= 0.05 s for the 0.125 % client.
- ``test_client_lift_round``: a whole 4-client round (protect x4, aggregate, finalize x4) in
  client_lift on the public benchmark's shapes (104 LoRA pairs, A 4 x 3200, B 3200 x 4, 0.125 %);
  target <= 10 s.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_she_lora_helpers import federation, random_update, reference  # noqa: E402

from benchmark.asv_bench.common import Steps  # noqa: E402
from defenses.she_lora import SHELoRADefense, SHELoRAParams  # noqa: E402
from she_lora.lowrank import relative_error, to_lora  # noqa: E402

SCALES = {
    "small": {"layers": 2, "dim": 256},
    "paper": pytest.param({"layers": 26, "dim": 3200}, marks=pytest.mark.slow),
}


@pytest.fixture(autouse=True)
def _paper_scale_on_request(request: pytest.FixtureRequest) -> None:
    """Paper-scale cases take a minute: run them with ``-m slow`` (or SHEBENCH_SLOW=1)."""
    if "[paper]" in request.node.name and "slow" not in (request.config.getoption("markexpr") or ""):
        if not os.environ.get("SHEBENCH_SLOW"):
            pytest.skip("paper scale: run with -m slow")


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Timings with one torch thread, like the asv benchmarks (SEAL is single-threaded anyway)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _shapes(layers: int, dim: int, modules: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    return {f"layers.{i}.{m}": (dim, dim) for i in range(layers) for m in modules}


@pytest.mark.parametrize("scale", list(SCALES.values()), ids=list(SCALES))
def test_server_lift_encrypt(benchmark, scale: dict) -> None:
    shapes = _shapes(scale["layers"], scale["dim"], ("q_proj", "v_proj"))
    fed = federation(shapes, (8, 16, 24, 32), (0.00125, 0.0025, 0.008, 0.016))
    d = Steps(SHELoRADefense(SHELoRAParams(lift="server_lift")))
    d.setup(fed)
    updates = [random_update(c, shapes) for c in fed.clients]
    d.negotiate(updates)
    payload = benchmark(d.protect, updates[0])
    enc = {u.client.rank: d.protect(u).timings["enc_s"] for u in updates}
    print(f"\nserver_lift enc_s by rank {enc}; 0.125% client cipher bytes {payload.cipher_bytes()}")
    assert payload.cipher_bytes() > 0


@pytest.mark.parametrize("scale", list(SCALES.values()), ids=list(SCALES))
def test_client_lift_round(benchmark, scale: dict) -> None:
    shapes = _shapes(scale["layers"], scale["dim"], ("q_proj", "k_proj", "v_proj", "o_proj"))
    fed = federation(shapes, (4, 4, 4, 4), (0.00125,) * 4, alpha=8.0)
    d = Steps(SHELoRADefense(SHELoRAParams(lift="client_lift")))
    d.setup(fed)
    updates = [random_update(c, shapes) for c in fed.clients]
    d.negotiate(updates)
    parts: dict[str, float] = {}

    def round_trip() -> dict:
        t0 = time.perf_counter()
        payloads = [d.protect(u) for u in updates]
        t1 = time.perf_counter()
        message = d.aggregate(payloads)
        t2 = time.perf_counter()
        received = d.copy(message)  # one broadcast: each client decrypts it once, then truncates
        finals = [d.defense.client.finalize(received, c) for c in fed.clients]
        parts.update(protect=t1 - t0, aggregate=t2 - t1, finalize=time.perf_counter() - t2)
        parts["up_MB"] = sum(p.nbytes() for p in payloads) / 1e6
        parts["down_MB"] = message.nbytes() / 1e6
        return finals[0]

    final = benchmark.pedantic(round_trip, rounds=1, iterations=1)
    print(f"\nclient_lift round: { {k: round(v, 3) for k, v in parts.items()} }")
    ref = reference(updates)
    name, client = next(iter(shapes)), fed.clients[0]
    A, B = to_lora(ref[name], client.rank, client.scale)
    assert relative_error(final[name].delta(), client.scale * (B @ A)) < 1e-5
