"""SHE-LoRA's padding rows and the secret column permutation.

Where a client's rank exceeds a module's aggregate rank, finalize pads A with rows drawn from the
public seed; one SGD step never moves them (their B columns are zero). Drawn in the original column
order (``padding="original"``), a server that replays them and matches their columns against the
permuted upload recovers the permutation. Drawn in the permuted layout (the default), the upload's
padding rows equal the server's own replay, computed without any secret, so they teach it nothing.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from duo import Duo
from test_she_lora_helpers import federation, random_update

from attacks.toolkit.projection import complement, project_a, recover_order
from benchmark.contract import ClientUpdate, LoRAFactors
from benchmark.federation.transcript import wire_copy
from defenses.she_lora import SHELoRADefense, SHELoRAParams

# l0.v has 8 outputs: its aggregate has rank 8, so the rank-16 client pads 8 rows
SHAPES = {"l0.q": (24, 40), "l0.v": (8, 40)}
RANKS, BUDGETS = (4, 8, 16), (0.1, 0.2, 0.35)
PADDED = "l0.v"


def round_two(padding: str, leakage: str = "ope", seed: int = 0, aggregated: tuple[int, ...] = (0, 1, 2)) -> dict:
    """Round 1 among all clients, then the rank-16 client's round-2 SGD upload as the server sees it
    (its view and what it knows of the start), plus the client's secrets for checking. ``seed`` draws
    the clients' data; the federation's public seed (hence the padding stream) stays 0. Only the
    ``aggregated`` clients' uploads make the round-1 aggregate."""
    fed = federation(SHAPES, RANKS, BUDGETS)
    d = Duo(SHELoRADefense(SHELoRAParams(padding=padding, leakage=leakage)))
    d.setup(fed)
    updates = [random_update(c, SHAPES, rnd=1, seed=seed) for c in fed.clients]
    d.negotiate(updates)
    message = d.aggregate([d.protect(u) for u in updates if u.client.client_id in aggregated])
    client = fed.clients[2]
    start = d.finalize(message, client)
    gen = torch.Generator().manual_seed(seed + 7)
    moved = {}
    for name, f in start.items():
        k = min(client.rank, SHAPES[name][0], SHAPES[name][1])  # rows that carry the aggregate
        dA = torch.zeros_like(f.A)
        dA[:k] = torch.randn(k, f.A.shape[1], generator=gen) * 1e-3  # one SGD step: padding rows stay put
        moved[name] = LoRAFactors(f.A + dA, f.B + torch.randn(f.B.shape, generator=gen) * 1e-3, f.scale)
    norms = random_update(client, SHAPES, rnd=2, seed=seed).input_sq_norms
    payload = d.protect(ClientUpdate(client, 2, moved, 30, norms, kind="sgd"))
    view = d.observe(payload)
    known = d.server.known_start(wire_copy(message), client)
    version = int(payload.meta["version"])
    return {"view": view, "known": known, "start": start, "client": client, "d": d,
            "layout": {n: d.client.side.layouts[version][n] for n in SHAPES}}


def visible_padding(run: dict) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    om = run["view"].modules[PADDED]
    vis = torch.nonzero(~om.A_hidden.any(0)).flatten()
    rows = list(range(min(SHAPES[PADDED]), run["client"].rank))
    return om.A[rows][:, vis], vis, rows


def test_original_order_padding_reveals_the_permutation() -> None:
    run = round_two("original")
    space = run["known"].spaces[PADDED]
    seen, vis, rows = visible_padding(run)
    assert space.a_loose == tuple(rows) and space.a_loose_values is not None
    true = [run["layout"][PADDED].perm[p] for p in vis.tolist()]
    assert true != vis.tolist()  # the permutation moves visible columns: there is something to find
    assert recover_order(seen, space.a_loose_values) == tuple(true)
    assert run["known"].spaces["l0.q"].a_loose == ()  # no padding, nothing loose


def test_permuted_padding_reveals_nothing() -> None:
    run = round_two("permuted")
    space = run["known"].spaces[PADDED]
    seen, vis, rows = visible_padding(run)
    assert space.a_loose == ()
    replay = run["known"].factors[PADDED].A  # computed by the server role without any secret
    assert torch.equal(seen, replay[rows][:, vis])  # the upload's padding is the public replay itself
    # matching it against the replay can only give the identity, which is not the permutation
    true = [run["layout"][PADDED].perm[p] for p in vis.tolist()]
    assert recover_order(seen, replay[rows]) == tuple(vis.tolist()) != tuple(true)


def test_uploaded_padding_does_not_depend_on_the_permutation() -> None:
    """Clients holding other data negotiate other global lists, hence another permutation: the
    padding rows they upload stay the same when drawn in the layout, and change with it otherwise."""
    for padding, same in (("permuted", True), ("original", False)):
        a, b = round_two(padding, seed=0), round_two(padding, seed=1)
        assert a["layout"][PADDED].perm != b["layout"][PADDED].perm
        assert torch.equal(visible_padding(a)[0], visible_padding(b)[0]) == same


@pytest.mark.parametrize("aggregated", [(0, 1, 2), (0, 1)], ids=["all", "low_ranks"])
@pytest.mark.parametrize("padding", ["permuted", "original"])
@pytest.mark.parametrize("leakage", ["ope", "plain"])
def test_the_start_lies_in_the_space_the_transcript_gives(padding: str, leakage: str, aggregated: tuple) -> None:
    """The client's true start, in the view's column order, has no component outside the start
    space (rows the server can only replay in another order excepted). ``low_ranks``: the aggregate
    of ranks 4 + 8 has fewer plaintext directions than the rank-16 client, whose fused aggregate gains
    the encrypted columns' directions: the server must pad its estimate as the client does."""
    run = round_two(padding, leakage, aggregated=aggregated)
    for name, space in run["known"].spaces.items():
        om = run["view"].modules[name]
        start = run["start"][name].A.double()
        if leakage == "ope":
            start = run["layout"][name].apply(start)
        hidden = om.A_hidden.any(0)
        keep = torch.tensor([p for p in range(start.shape[1]) if not hidden[p] and p not in space.a_free])
        rows = [i for i in range(start.shape[0]) if i not in space.a_loose]
        N = complement(space.a_rows.double()[:, keep])
        assert N.shape[1] > 0
        assert float((start[rows][:, keep] @ N).norm()) <= 1e-5 * float(start.norm())
        assert run["known"].factors[name].A.shape == start.shape
        pad = [i for i in range(min(SHAPES[name]), start.shape[0])]  # the padding replay is exact in its order
        if padding == "permuted" or leakage == "plain":
            assert torch.allclose(run["known"].factors[name].A[pad].double(), start[pad], atol=1e-6)


def attacker_view(run: dict):
    known = run["known"]
    return replace(run["view"], prev=known.factors, start_known=known.known, start_space=known.spaces)


def test_the_adaptive_projection_uses_the_leak_only_when_it_is_open() -> None:
    """With original-order padding the projection maps every visible column to its feature (the
    start vanishes in the original coordinates, no trimming); with permuted padding it cannot, and
    trims up to the global list's length of displaced coordinates instead."""
    leaky = round_two("original")
    p = project_a(attacker_view(leaky), PADDED, leaky["view"].modules[PADDED])
    assert p.trim == 0 and "order recovered" in p.note
    start = leaky["start"][PADDED].A.double()  # original column order
    assert float((start @ p.proj.T).norm()) <= 1e-5 * float(start.norm())
    closed = round_two("permuted")
    om = closed["view"].modules[PADDED]
    p = project_a(attacker_view(closed), PADDED, om)
    assert p.trim == om.displaced > 0 and "recovered" not in p.note
