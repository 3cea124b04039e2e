"""SHE-LoRA's server role: only a public CKKS context (no secret key), OPE codes it cannot decode.

It merges the clients' top-k lists into ordered global lists, and aggregates uploads column-aware:
plaintext columns as stacked factors, encrypted columns by ciphertext sums (client lift) or by
lifting Enc(a_ij) with the plaintext B_i first (server lift).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from she_lora import ckks
from she_lora._pool import lift_parallel
from she_lora.layout import client_blocks
from she_lora.lift import ServerLift
from she_lora.negotiation import TopK, merge_global_list
from she_lora.permutation import ColumnLayout
from she_lora.plan import Plan, ProtocolConfig
from she_lora.reparam import plain_aggregate, thin_linalg


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

    def negotiate(self, messages: Sequence[Mapping[str, TopK]], fresh: bool) -> dict[str, list[int]]:
        """A new version of the global lists: from scratch (``fresh``) or extending the current one."""
        prefix = {} if fresh or not self.globals else self.globals[self.version]
        lists = {
            name: merge_global_list([msg[name] for msg in messages], prefix.get(name, ()), self.cfg.shares)
            for name in sorted(self.plan.shapes)
        }
        self.version += 1
        self.globals[self.version] = lists
        return lists

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
            cipher, extra = self._sum_client_lifts(uploads, ids)
        else:
            cipher, extra = self._server_lift(uploads, ids, coefs), {}
        meta.update(extra)
        return plain, cipher, meta

    def _sum_client_lifts(self, uploads: Sequence[Any], ids: list[int]) -> tuple[dict[str, list[bytes]], dict[str, Any]]:
        norms = {float(meta["lift_norm"]) for _, _, meta in uploads}
        if len(norms) != 1:
            raise ValueError(f"aggregate: clients weighted their lifts by different round totals {sorted(norms)}")
        entries = max(self.plan.lift_entries(self.plan.k[i]) for i in ids)
        payloads = [cipher.get("lift", []) for _, cipher, _ in uploads]
        summed = ckks.add_packed(self.ctx, [p for p in payloads if p], ragged=True) if any(payloads) else []
        return ({"lift": summed} if summed else {}), {"lift_norm": norms.pop(), "lift_entries": entries}

    def _server_lift(self, uploads: Sequence[Any], ids: list[int], coefs: list[float]) -> dict[str, list[bytes]]:
        clients = []
        for cid, coef, (plain, cipher, _) in zip(ids, coefs, uploads):
            rank = self.plan.member(cid).rank
            blocks = client_blocks(self.plan.groups, rank, self.plan.k[cid], self.ctx.slot_count)
            blobs = list(cipher.get("lift", []))
            if len(blobs) != max((b.ct for b in blocks), default=-1) + 1:
                raise ValueError(f"aggregate: client {cid} sent {len(blobs)} ciphertexts, its layout needs {max((b.ct for b in blocks), default=-1) + 1}")
            for blob in blobs[:1]:
                self.ctx.load_ct(blob)  # fail fast (and in this process) on a foreign context
            clients.append((blobs, blocks, {name: plain[f"{name}/B"].double().numpy() for name in self.plan.shapes}, coef))
        if self.cfg.n_workers > 1 and len(self.plan.groups) > 1:
            out = lift_parallel(self.public_context, self.plan.groups, self.plan.shapes, clients, self.cfg.n_workers)
        else:
            lift = ServerLift(self.ctx, self.plan.groups, self.plan.shapes)
            for blobs, blocks, B, coef in clients:
                lift.add_client(blobs, blocks, B, coef)
            out = lift.finish()
        return {f"{name}/lift": blobs for name, blobs in sorted(out.items())}


