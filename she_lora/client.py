"""SHE-LoRA's client role: holds the shared secret key and OPE key; never runs on the server.

Clients (a) rank their A-columns and send top-k lists, (b) install the negotiated global list and the
permutation built from it, (c) split each update into a plaintext part (B, and A with the encrypted
block removed, columns permuted) and a packed ciphertext part, and (d) decrypt the aggregate and fuse
it back into the full aggregate delta.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from she_lora import ckks
from she_lora.layout import client_blocks
from she_lora.lift import decode_lift, pack_blocks
from she_lora.lowrank import FactoredDelta
from she_lora.negotiation import TopK
from she_lora.ope import KeyedOPE
from she_lora.permutation import ColumnLayout
from she_lora.plan import Plan, ProtocolConfig
from she_lora.reparam import EXPONENTS_KEY, exponents_tensor, fuse, lift_columns, read_exponents, thin_linalg
from she_lora.sensitivity import column_sensitivity, top_columns


class ClientSide:
    """State every client shares: CKKS secret context, OPE key, the installed global lists."""

    def __init__(self, plan: Plan, cfg: ProtocolConfig) -> None:
        self.plan, self.cfg = plan, cfg
        t0 = time.perf_counter()
        self.ctx = ckks.make_secret_context(cfg.ckks)
        self.keygen_s = time.perf_counter() - t0
        self._ope_key = os.urandom(32)
        self._ope = {name: KeyedOPE(self._ope_key, n, name) for name, (_, n) in plan.shapes.items()}
        self.globals: dict[int, dict[str, list[int]]] = {}
        self.layouts: dict[int, dict[str, ColumnLayout]] = {}

    def topk(self, client_id: int, A: Mapping[str, Tensor], input_sq_norms: Mapping[str, Tensor]) -> dict[str, TopK]:
        """Per module the k_i most sensitive columns, encoded for the server (OPE or plain)."""
        ks = self.plan.k[self.plan.member(client_id).client_id]
        out = {}
        for name in sorted(self.plan.shapes):
            if name not in A or name not in input_sq_norms:
                raise ValueError(f"client {client_id}: update lacks module {name!r} (A or input_sq_norms)")
            scores = column_sensitivity(A[name], input_sq_norms[name])
            cols = top_columns(scores, ks[name])
            sent = tuple(float(scores[c]) for c in cols) if self.cfg.send_scores else None
            out[name] = TopK(tuple(self.encode(name, cols)), sent)
        return out

    def encode(self, name: str, cols: list[int]) -> list[int]:
        return self._ope[name].encode(cols) if self.cfg.leakage == "ope" else list(cols)

    def install(self, version: int, codes: Mapping[str, list[int]]) -> None:
        """Decode the server's global lists and build the shared permutation of each module."""
        lists = {name: (self._ope[name].decode(c) if self.cfg.leakage == "ope" else list(c)) for name, c in codes.items()}
        self.globals[version] = lists
        self.layouts[version] = {
            name: ColumnLayout.from_global_list(g, self.plan.shapes[name][1], self.cfg.swap) for name, g in lists.items()
        }

    def protect(
        self, client_id: int, scale: float, n_samples: float, factors: Mapping[str, tuple[Tensor, Tensor]], version: int,
        lift_norm: float, exponents: Mapping[str, int] | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, list[bytes]], float]:
        """Plaintext tensors, ciphertexts and the encryption time of one update.

        Encrypted values are scaled by 2^-e per module before encoding (see ``ckks.exponent_of``),
        and the e used travel in the clear as ``plain["lift_exponents"]`` (one int per module).
        server_lift: each client picks e from its own hidden columns (``exponents`` is ignored);
        the server folds it into its weights. client_lift: ciphertexts of all clients are added, so
        all must use the round's agreed ``exponents`` (``propose_exponents`` -> the server's
        ``agree_exponents``); without them e = 0 (the values' own size: precision then degrades for
        small updates).
        """
        rank, ks = self.plan.member(client_id).rank, self.plan.k[client_id]
        plain: dict[str, Tensor] = {}
        hidden = self._split(client_id, factors, version, plain)
        t0 = time.perf_counter()
        if self.cfg.lift == "client_lift":
            coef = scale * n_samples / lift_norm
            lifted = {name: lift_columns(factors[name][1], hidden[name], coef).numpy() for name in hidden}
            used = {name: int((exponents or {}).get(name, 0)) for name in sorted(self.plan.shapes)}
            blobs = self._encrypt_lift(lifted, ks, used)
        else:
            cols = {name: hidden[name].double().numpy() for name in hidden}
            used = {name: ckks.exponent_of(c) for name, c in cols.items()}
            cols = {name: np.ldexp(c, -used[name]) for name, c in cols.items()}
            blocks = client_blocks(self.plan.bands, rank, ks, self.ctx.slot_count)
            blobs = [self.ctx.encrypt_slots(v) for v in pack_blocks(cols, self.plan.bands, blocks, self.ctx.slot_count)]
        plain[EXPONENTS_KEY] = exponents_tensor(used, self.plan.shapes)
        return plain, ({"lift": blobs} if blobs else {}), time.perf_counter() - t0

    def propose_exponents(
        self, client_id: int, scale: float, n_samples: float, factors: Mapping[str, tuple[Tensor, Tensor]], version: int,
        lift_norm: float,
    ) -> dict[str, int]:
        """client_lift: this client's proposal for the round's exponents, per module the e of its
        largest |lifted value| (``ckks.exponent_of``). Sent to the server in the clear: it reveals
        the power of two of the client's largest encrypted value per module, nothing finer."""
        rank, ks = self.plan.member(client_id).rank, self.plan.k[client_id]
        coef = scale * n_samples / lift_norm
        out = {}
        for name in sorted(self.plan.shapes):
            A, B = self._check(name, factors, rank)
            hidden = A.detach()[:, self.globals[version][name][: ks[name]]]  # global positions 0..k-1
            out[name] = ckks.exponent_of(lift_columns(B, hidden, coef))
        return out

    def bound_exponents(self, client_id: int, scale: float, factors: Mapping[str, tuple[Tensor, Tensor]]) -> dict[str, int]:
        """client_lift, before the round's global list and sample total are known: per module the e
        of an upper bound on any lifted value this client could encrypt, scale * max_i ||B_i||
        * max_j ||a_j|| (Cauchy-Schwarz; the sample weight n_i / n is at most 1). A few bits looser
        than ``propose_exponents``, but it can travel with the top-k lists. Reveals as much: the
        power of two of a magnitude, nothing finer."""
        rank = self.plan.member(client_id).rank
        out = {}
        for name in sorted(self.plan.shapes):
            A, B = self._check(name, factors, rank)
            bound = scale * float(B.double().norm(dim=1).max()) * float(A.double().norm(dim=0).max())
            out[name] = ckks.exponent_of([bound])
        return out

    def _split(self, client_id: int, factors: Mapping[str, tuple[Tensor, Tensor]], version: int, plain: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fill ``plain`` with B and the plaintext columns of A (permuted); return the hidden columns
        per module, column j = global position j."""
        rank, ks = self.plan.member(client_id).rank, self.plan.k[client_id]
        hidden: dict[str, Tensor] = {}
        for name in sorted(self.plan.shapes):
            A, B = self._check(name, factors, rank)
            n, k = A.shape[1], ks[name]
            layout = self.layouts[version][name]
            if len(self.globals[version][name]) < k:
                raise ValueError(f"module {name!r}: global list shorter than client {client_id}'s budget; negotiate first")
            A_perm = layout.apply(A.detach())
            plain[f"{name}/A"] = A_perm[:, : n - k].clone().contiguous()
            plain[f"{name}/B"] = B.detach().clone().contiguous()
            hidden[name] = A_perm[:, n - 1 - torch.arange(k)]
        return hidden

    def _encrypt_lift(self, lifted: Mapping[str, np.ndarray], ks: Mapping[str, int], exponents: Mapping[str, int]) -> list[bytes]:
        n_entries = self.plan.lift_entries(ks)
        if n_entries == 0:
            return []
        scaled = {name: np.ldexp(cols, -exponents[name]) for name, cols in lifted.items()}
        vec = np.zeros(self.plan.offsets[n_entries])
        for i, (name, j) in enumerate(self.plan.order[:n_entries]):
            if j < ks[name]:
                vec[self.plan.offsets[i] : self.plan.offsets[i + 1]] = scaled[name][:, j]
        return ckks.encrypt_packed(self.ctx, vec, self.cfg.n_workers)

    def fuse(
        self, plain: Mapping[str, Tensor], cipher: Mapping[str, Any], meta: Mapping[str, Any], rank: int | None = None
    ) -> dict[str, FactoredDelta]:
        """Decrypt the aggregated columns and fuse them with the plaintext aggregate (original layout).
        ``rank`` keeps the leading ``rank`` components per module (what a client finalizing at its
        own rank needs; the full aggregate otherwise)."""
        version, k_round = int(meta["version"]), meta["k_round"]
        lifted = self._decrypt_lift(plain, cipher, meta)
        out = {}
        with thin_linalg():
            for name in sorted(self.plan.shapes):
                lift = torch.from_numpy(lifted.get(name, np.zeros((self.plan.shapes[name][0], 0))))[:, : k_round[name]]
                out[name] = fuse(plain[f"{name}/US"], plain[f"{name}/Vh"], lift, self.layouts[version][name], rank)
        return out

    def _decrypt_lift(self, plain: Mapping[str, Tensor], cipher: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
        k_round = meta["k_round"]
        exponents = read_exponents(plain, self.plan.shapes)
        if self.cfg.lift == "server_lift":
            outputs = {int(key.split("/")[1]): blobs for key, blobs in cipher.items() if key.startswith("lift/")}
            return decode_lift(self.ctx, outputs, self.plan.bands, self.plan.shapes, k_round, exponents)
        n_entries = int(meta.get("lift_entries", 0))
        if n_entries == 0:
            return {}
        vec = ckks.decrypt_packed(self.ctx, cipher["lift"], self.plan.offsets[n_entries])
        vec *= float(meta["lift_norm"]) / float(meta["n_total"])
        out = {name: np.zeros((self.plan.shapes[name][0], k)) for name, k in k_round.items()}
        for i, (name, j) in enumerate(self.plan.order[:n_entries]):
            if j < k_round[name]:
                out[name][:, j] = np.ldexp(vec[self.plan.offsets[i] : self.plan.offsets[i + 1]], exponents.get(name, 0))
        return out

    def _check(self, name: str, factors: Mapping[str, tuple[Tensor, Tensor]], rank: int) -> tuple[Tensor, Tensor]:
        if name not in factors:
            raise ValueError(f"update lacks module {name!r}")
        A, B = factors[name]
        m, n = self.plan.shapes[name]
        if tuple(A.shape) != (rank, n) or tuple(B.shape) != (m, rank):
            raise ValueError(
                f"module {name!r}: expected A {(rank, n)} and B {(m, rank)} for rank {rank}, got A {tuple(A.shape)} and B {tuple(B.shape)}"
            )
        return A, B
