"""SHE-LoRA's server role: only a public CKKS context (no secret key), OPE codes it cannot decode.

It merges the clients' top-k lists into ordered global lists, and aggregates uploads column-aware:
plaintext columns as stacked factors, encrypted columns by ciphertext sums (client lift) or by
lifting Enc(a_ij) with the plaintext B_i first (server lift).

Magnitudes (``plain["lift_exponents"]``, one power-of-two exponent per module, in the clear both
ways): client lift sums ciphertexts, so every client must have scaled by the round's agreed
exponents (``agree_exponents``; mixed exponents are refused); server lift folds each client's own
exponents into its plaintext weights and sends back the output exponents it derived from B. What
the server learns from them: per client and module, the power of two of the largest encrypted
|value| (client lift: of the lifted columns; server lift: of the hidden A-columns), nothing finer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from she_lora import ckks
from she_lora.layout import client_blocks
from she_lora.lift import LiftInput, ServerLift, lift_parallel, output_exponents
from she_lora.negotiation import TopK
from she_lora.negotiation_gp import NEGOTIATIONS, Negotiated
from she_lora.permutation import ColumnLayout
from she_lora.plan import Plan, ProtocolConfig
from she_lora.reparam import EXPONENTS_KEY, exponents_tensor, plain_aggregate, read_exponents, thin_linalg


class ServerSide:
    """Negotiation and aggregation with nothing secret."""

    def __init__(self, plan: Plan, cfg: ProtocolConfig, public_context: bytes) -> None:
        self.plan, self.cfg = plan, cfg
        self.public_context = public_context
        self.ctx = ckks.load_public_context(public_context)
        if self.ctx.has_secret_key:
            raise ValueError("server context must not hold the secret key")
        self.version = 0
        self.globals: dict[int, dict[str, list[int]]] = {}
        self.negotiations: dict[int, Negotiated] = {}  # version -> how its lists were chosen

    def negotiate(self, messages: Sequence[Mapping[str, TopK]], fresh: bool, seed: int = 0) -> dict[str, list[int]]:
        """A new version of the global lists: from scratch (``fresh``) or extending the current one,
        with fixed shares or shares tuned to Eq. 14 (``cfg.negotiation``; ``seed`` seeds the tuning)."""
        prefix = {} if fresh or not self.globals else self.globals[self.version]
        outcome = NEGOTIATIONS[self.cfg.negotiation](messages, sorted(self.plan.shapes), prefix, self.cfg.shares,
                                                     (seed, self.version + 1), self.cfg.gp_calls)
        self.version += 1
        self.negotiations[self.version] = outcome
        self.globals[self.version] = outcome.lists
        return outcome.lists

    def agree_exponents(self, proposals: Sequence[Mapping[str, int]]) -> dict[str, int]:
        """client_lift: the round's exponent per module from every client's ``propose_exponents``:
        the largest proposal plus ceil(log2(clients)), so the sum stays in [-1, 1]
        (``ckks.agree_exponent``). Learns each client's per-module power of two; every client
        learns the maximum."""
        if not proposals:
            raise ValueError("agree_exponents: no proposals")
        return {name: ckks.agree_exponent([int(p.get(name, 0)) for p in proposals], len(proposals)) for name in sorted(self.plan.shapes)}

    def known_layout(self, version: int, name: str) -> ColumnLayout | None:
        """The permutation, if the server can compute it (plain leakage: it knows the indices)."""
        if self.cfg.leakage != "plain" or version not in self.globals:
            return None
        return ColumnLayout.from_global_list(self.globals[version][name], self.plan.shapes[name][1], self.cfg.swap)

    def aggregate(
        self, uploads: Sequence[tuple[Mapping[str, Tensor], Mapping[str, Any], Mapping[str, Any]]]
    ) -> tuple[dict[str, Tensor], dict[str, list[bytes]], dict[str, Any]]:
        """(plain, cipher, meta) of the broadcast from each client's (plain, cipher, meta)."""
        if not uploads:
            raise ValueError("aggregate: no payloads")
        versions = {int(meta["version"]) for _, _, meta in uploads}
        if len(versions) != 1:
            raise ValueError(f"aggregate: payloads use different negotiation versions {sorted(versions)}")
        counts = [float(meta["n_samples"]) for _, _, meta in uploads]
        total = sum(counts)
        if total <= 0:
            raise ValueError("aggregate: payloads report no samples")
        coefs = [c / total * float(meta["scale"]) for c, (_, _, meta) in zip(counts, uploads)]
        ids = [int(meta["client_id"]) for _, _, meta in uploads]
        plain: dict[str, Tensor] = {}
        with thin_linalg():
            for name, (_, n) in sorted(self.plan.shapes.items()):
                terms = [(c, p[f"{name}/B"], p[f"{name}/A"]) for c, (p, _, _) in zip(coefs, uploads)]
                us, vh = plain_aggregate(terms, n)
                dtype = uploads[0][0][f"{name}/B"].dtype
                plain[f"{name}/US"], plain[f"{name}/Vh"] = us.to(dtype).contiguous(), vh.to(dtype).contiguous()
        k_round = {name: max(self.plan.k[i][name] for i in ids) for name in self.plan.shapes}
        meta: dict[str, Any] = {"kind": "aggregate", "version": versions.pop(), "n_total": total, "k_round": k_round}
        if self.cfg.lift == "client_lift":
            cipher, extra, exponents = self._sum_client_lifts(uploads, ids)
        else:
            cipher, exponents = self._server_lift(uploads, ids, coefs)
            extra = {}
        plain[EXPONENTS_KEY] = exponents_tensor(exponents, self.plan.shapes)
        meta.update(extra)
        return plain, cipher, meta

    def _sum_client_lifts(self, uploads: Sequence[Any], ids: list[int]) -> tuple[dict[str, list[bytes]], dict[str, Any], dict[str, int]]:
        norms = {float(meta["lift_norm"]) for _, _, meta in uploads}
        if len(norms) != 1:
            raise ValueError(f"aggregate: clients weighted their lifts by different round totals {sorted(norms)}")
        exps = {tuple(sorted(read_exponents(plain, self.plan.shapes).items())) for plain, cipher, _ in uploads if cipher.get("lift")}
        if len(exps) > 1:
            raise ValueError("aggregate: clients scaled their lifts by different exponents; agree on them first (agree_exponents)")
        entries = max(self.plan.lift_entries(self.plan.k[i]) for i in ids)
        payloads = [cipher.get("lift", []) for _, cipher, _ in uploads]
        summed = ckks.add_packed(self.ctx, [p for p in payloads if p], ragged=True) if any(payloads) else []
        exponents = dict(exps.pop()) if exps else {}
        return ({"lift": summed} if summed else {}), {"lift_norm": norms.pop(), "lift_entries": entries}, exponents

    def _server_lift(self, uploads: Sequence[Any], ids: list[int], coefs: list[float]) -> tuple[dict[str, list[bytes]], dict[str, int]]:
        inputs = []
        for cid, coef, (plain, cipher, _) in zip(ids, coefs, uploads):
            rank = self.plan.member(cid).rank
            blocks = client_blocks(self.plan.bands, rank, self.plan.k[cid], self.ctx.slot_count)
            blobs = list(cipher.get("lift", []))
            n_ct = max((b.ct for b in blocks), default=-1) + 1
            if len(blobs) != n_ct:
                raise ValueError(f"aggregate: client {cid} sent {len(blobs)} ciphertexts, its layout needs {n_ct}")
            for blob in blobs[:1]:
                self.ctx.load_ct(blob)  # fail fast (and in this process) on a foreign context
            B = {name: plain[f"{name}/B"].double().numpy() for name in self.plan.shapes}
            inputs.append(LiftInput(blobs, blocks, B, coef, read_exponents(plain, self.plan.shapes)))
        exponents = output_exponents(inputs, self.plan.bands)
        if self.cfg.n_workers > 1:
            out = lift_parallel(self.ctx, self.plan.bands, self.plan.shapes, inputs, exponents, self.cfg.n_workers)
        else:
            lift = ServerLift(self.ctx, self.plan.bands, self.plan.shapes, exponents)
            for x in inputs:
                lift.add(x)
            out = lift.finish()
        return {f"lift/{band}": blobs for band, blobs in sorted(out.items())}, exponents
