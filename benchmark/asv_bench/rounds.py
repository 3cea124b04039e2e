"""SHE-LoRA rounds driven through the library alone (``she_lora.plan``, ``client``, ``server``) on random
factors: no model, no data, no defense adapter. Shared by the asv suite (``bench_library``), the
pytest-benchmark cases (``tests/bench/test_bench_library.py``) and the precision tests.

Why the library and not ``defenses.she_lora``: these measure the method's own cost (the adapter adds
negotiation bookkeeping and wire metering), and they keep working while the adapter changes. Project
modules are imported inside functions only (asv imports this folder at older commits too).

Shapes: ``COST_PUBLIC_BENCH`` is ``benchmark/scenarios/cost_public_bench.toml`` (the public SHE-LoRA
code's benchmark): 26 layers x q, k, v, o projections of 3200 x 3200 (104 LoRA pairs, A of 4 x 3200),
four rank-4 clients encrypting 0.125 % of the columns (4 per module).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

COST_PUBLIC_BENCH: dict[str, Any] = {
    "layers": 26, "modules": ("q_proj", "k_proj", "v_proj", "o_proj"), "dim": 3200,
    "ranks": (4, 4, 4, 4), "budgets": (0.00125,) * 4,
}
SMALL: dict[str, Any] = {"layers": 2, "modules": ("q_proj", "v_proj"), "dim": 256, "ranks": (4, 8), "budgets": (0.02, 0.05)}
FLEXLORA_50: dict[str, Any] = {"n_clients": 50, "dim": 3200, "min_rank": 8, "max_rank": 32}


def _lib(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as exc:  # a commit without the module: asv skips on NotImplementedError
        raise NotImplementedError(f"{name} is not importable: {type(exc).__name__}: {exc}") from exc


def shapes_of(spec: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    d = int(spec["dim"])
    return {f"layers.{i}.{m}": (d, d) for i in range(int(spec["layers"])) for m in spec["modules"]}


def protocol(lift: str, n_workers: int = 1) -> Any:
    """SHE-LoRA's default CKKS chain per lift mode (as ``defenses.she_lora`` picks it); ``n_workers``
    forked processes per party where the library has them."""
    ckks, plan = _lib("she_lora.ckks"), _lib("she_lora.plan")
    server = lift == "server_lift"
    params = ckks.CKKSParams(8192, (60, 40, 40, 60) if server else (60, 60), 40 if server else 50, server)
    extra = {"n_workers": n_workers} if n_workers > 1 else {}
    return plan.ProtocolConfig(lift=lift, leakage="plain", ckks=params, **extra)


@dataclass
class LibraryRound:
    """One federation set up and negotiated, with every client's factors; call the steps in order."""

    lift: str
    plan: Any
    clients: Any  # she_lora.client.ClientSide: the state all clients share (secret key)
    server: Any  # she_lora.server.ServerSide: public context only
    factors: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]
    n_samples: list[float]
    scales: list[float]
    version: int = 1
    exponents: dict[str, int] | None = field(default=None)

    @property
    def total(self) -> float:
        return float(sum(self.n_samples))

    def agree(self) -> dict[str, int] | None:
        """client_lift: every client proposes its exponents, the server agrees (a commit without the
        step: None, the values' own size)."""
        if self.lift != "client_lift" or not hasattr(self.clients, "propose_exponents"):
            return None
        proposals = [self.clients.propose_exponents(i, s, n, f, self.version, self.total)
                     for i, (f, n, s) in enumerate(zip(self.factors, self.n_samples, self.scales))]
        self.exponents = self.server.agree_exponents(proposals)
        return self.exponents

    def protect(self, i: int) -> tuple[dict, dict, dict]:
        args = (i, self.scales[i], self.n_samples[i], self.factors[i], self.version, self.total)
        if self.exponents is not None:
            plain, cipher, _ = self.clients.protect(*args, self.exponents)
        else:
            plain, cipher, _ = self.clients.protect(*args)
        meta = {"version": self.version, "n_samples": self.n_samples[i], "scale": self.scales[i], "client_id": i,
                "lift_norm": self.total}
        return plain, cipher, meta

    def protect_all(self) -> list[tuple[dict, dict, dict]]:
        self.agree()
        return [self.protect(i) for i in range(len(self.factors))]

    def aggregate(self, uploads: Sequence[tuple[dict, dict, dict]]) -> tuple[dict, dict, dict]:
        return self.server.aggregate(uploads)

    def finalize(self, message: tuple[dict, dict, dict], rank: int | None = None) -> dict[str, Any]:
        """One client's decryption and fusion (at ``rank`` when the library supports it)."""
        try:
            return self.clients.fuse(*message, rank=rank) if rank is not None else self.clients.fuse(*message)
        except TypeError:  # an older library without the rank argument
            return self.clients.fuse(*message)

    def reference(self, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Plaintext FlexLoRA of ``names`` (default: every module) as dense float64 sums; tests only."""
        out = {}
        for name in names if names is not None else self.plan.shapes:
            out[name] = sum(n / self.total * s * (f[name][1].double() @ f[name][0].double())
                            for f, n, s in zip(self.factors, self.n_samples, self.scales))
        return out

    def bytes_up(self, uploads: Sequence[tuple[dict, dict, dict]]) -> int:
        return sum(len(b) for _, cipher, _ in uploads for blobs in cipher.values() for b in blobs)


def build_round(lift: str, spec: Mapping[str, Any], magnitude: float | None = None, dtype: torch.dtype = torch.float32,
                seed: int = 0, alpha: float = 16.0, n_workers: int = 1) -> LibraryRound:
    """Plan, keys and negotiated global lists for one federation of ``spec`` (see ``SMALL``).

    Factors: A ~ N(0, 1/n), B ~ N(0, 0.01^2) (a LoRA after a few steps); ``magnitude`` rescales B so
    that the aggregate's entries have roughly that size (the precision tests sweep it).
    """
    plan_mod, client_mod, server_mod, ckks = (_lib(m) for m in ("she_lora.plan", "she_lora.client", "she_lora.server", "she_lora.ckks"))
    shapes = shapes_of(spec)
    members = [plan_mod.Member(i, int(r), float(b)) for i, (r, b) in enumerate(zip(spec["ranks"], spec["budgets"]))]
    cfg = protocol(lift, n_workers)
    plan = plan_mod.Plan(shapes, members, lift, cfg.ckks.poly_modulus_degree // 2)
    clients = client_mod.ClientSide(plan, cfg)
    server = server_mod.ServerSide(plan, cfg, ckks.public_context_bytes(clients.ctx))
    gen = torch.Generator().manual_seed(seed)
    factors, norms = [], []
    for mem in members:
        f, x = {}, {}
        for name, (m, n) in shapes.items():
            A = torch.randn(mem.rank, n, generator=gen, dtype=torch.float64) / n**0.5
            B = torch.randn(m, mem.rank, generator=gen, dtype=torch.float64) * 0.01
            f[name] = (A.to(dtype), B.to(dtype))
            x[name] = torch.rand(n, generator=gen, dtype=torch.float64) * 10
        factors.append(f)
        norms.append(x)
    n_samples = [20.0 + 7 * i for i in range(len(members))]
    scales = [alpha / mem.rank for mem in members]
    rnd = LibraryRound(lift, plan, clients, server, factors, n_samples, scales)
    if magnitude is not None:
        name = next(iter(shapes))
        peak = float(rnd.reference([name])[name].abs().max())
        for f in factors:
            for key, (A, B) in f.items():
                f[key] = (A, (B.double() * (magnitude / peak)).to(dtype))
    messages = [clients.topk(mem.client_id, {n: f[n][0] for n in shapes}, x) for mem, f, x in zip(members, factors, norms)]
    clients.install(1, server.negotiate(messages, fresh=True))
    return rnd


def flexlora_terms(n_clients: int = 50, dim: int = 3200, min_rank: int = 8, max_rank: int = 32,
                   seed: int = 0) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    """Weighted (w s, B, A) terms of ``n_clients`` clients with ranks spread over [min_rank, max_rank]
    (50 clients of 8..32: stacked rank 1000), float32 like trained LoRA factors."""
    gen = torch.Generator().manual_seed(seed)
    ranks = [min_rank + ((max_rank - min_rank) * i) // max(1, n_clients - 1) for i in range(n_clients)]
    w = np.full(n_clients, 1.0 / n_clients)
    return [(float(wi) * 16.0 / r, torch.randn(dim, r, generator=gen) * 0.01, torch.randn(r, dim, generator=gen) / dim**0.5)
            for wi, r in zip(w, ranks)]
