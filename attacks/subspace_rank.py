"""Soft subspace ranking: every vocabulary token ranked by its distance to the observed subspace.

Exact span checks need a clean low-rank update. When the batch's tokens exceed the LoRA rank, when
noise (DP) fills the spectrum, or when the update is an AdamW delta, nothing passes a threshold, yet
the top singular directions still lean towards the batch's inputs (a TIGER/SOMP-like relaxation).
This attack keeps the ``dim`` strongest directions, ranks the vocabulary by distance to them, and
orders the best tokens into sequences with the second layer's distance as a score (no threshold).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from attacks.toolkit import helptext as H
from attacks.toolkit.decoding import (
    LayerCheck,
    first_layer_is_position_free,
    layer_checks,
    soft_decode,
    vocab_distances,
)
from attacks.toolkit.preconditions import layer0_checks, start_caveats
from attacks.toolkit.probing import is_decoder
from attacks.toolkit.textutil import decode, harness_ids
from benchmark.contract import (
    RECONSTRUCTION_METRICS,
    Attack,
    AttackerView,
    AttackParams,
    Control,
    Reconstruction,
    gradient_probe,
)


@dataclass(frozen=True)
class SubspaceRankParams(AttackParams):
    """How many subspace directions and tokens the soft ranking keeps, and the decoding bounds."""

    attack: ClassVar[str] = "subspace_rank"
    rank_tol: float = field(default=1e-7, metadata={"help": H.RANK_TOL})
    dim: int = field(default=0, metadata={"help": "subspace directions kept; 0: the numerical rank, or where "
                                                  "the spectrum is saturated batch_size x tokens_per_example "
                                                  "capped below the rank; >= 0"})
    tokens_per_example: int = field(default=16, metadata={"help": "tokens assumed per private example when "
                                                                  "dim is estimated (dim = 0); >= 1"})
    top_n: int = field(default=0, metadata={"help": "top-ranked tokens used; 0: as many as dim; >= 0"})
    max_len: int = field(default=40, metadata={"help": H.MAX_LEN})
    max_positions: int = field(default=64, metadata={"help": "position-dependent (encoder) models: most "
                                                             "positions scanned; >= 1"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_fraction("rank_tol")
        self.require_at_least(0, "dim", "top_n")
        self.require_at_least(1, "tokens_per_example", "max_len", "max_positions")


class SubspaceRank(Attack):
    name: ClassVar[str] = "subspace_rank"
    version: ClassVar[str] = "2"
    requires: ClassVar[frozenset[str]] = frozenset({"plaintext", "model"})
    target: ClassVar[str] = "probe"
    reads_sums: ClassVar[bool] = True  # a span holds every summed client's tokens: one batch of all
    metrics: ClassVar[Mapping[str, bool]] = RECONSTRUCTION_METRICS
    control: ClassVar[Control] = Control(
        scenario="paper",
        overrides=gradient_probe([1, 2]),
        metric="rouge1", floor=0.8,
        why="the soft ranking (a TIGER/SOMP-like relaxation of DAGER's threshold) puts the batch's tokens first "
            "where the span is exact: the paper scenario's rank-256 client, a round-1 gradient at factors the "
            "server drew, 1 and 2 tweets (it scored 1.0 at batch 1 on the default scenario; batch 1 and 2 are not "
            "yet measured at this scale). Test scale: tiny_llama4 at rank 32, a round-2 gradient, batch 1",
        tiny=gradient_probe([1], rnd=2, rank=32, model={"name": "tiny_llama4"}),
        tiny_floor=0.7,
    )
    Params = SubspaceRankParams
    params: SubspaceRankParams

    def _reconstruct(self, view: AttackerView) -> Reconstruction:
        p = self.params
        adaptive = p.mode == "adaptive"
        checks = layer0_checks(view, adaptive, p.rank_tol, dim=p.dim or None, exact=False)
        dim = p.dim
        if not dim and (checks[0].saturated or checks[0].vacuous):
            dim = self._dim_estimate(view, checks[0])
            checks = layer_checks(view, adaptive, p.rank_tol, dim=dim, exact=False)
        first = checks[0]
        dim = dim or first.rank
        top_n = p.top_n or dim
        model, tok = view.model, view.tokenizer
        if first_layer_is_position_free(model, first):
            scores = vocab_distances(model, first)
        else:
            positions = min(p.max_positions, first.rank + 2)  # every visible position adds a direction
            scores = torch.stack([vocab_distances(model, first, pos) for pos in range(positions)]).min(0).values
        ranked = torch.argsort(scores)[:top_n].tolist()
        extra = {"dim": float(dim), "rank_l0": float(first.rank), "bag_size": float(len(ranked))}
        second = checks[1] if len(checks) > 1 else None
        if second is None or not is_decoder(model) or not first_layer_is_position_free(model, first):
            return Reconstruction(texts=[tok.decode(ranked, skip_special_tokens=True)], token_ids=[ranked],
                                  extra=extra, note="unordered: top-ranked tokens")
        tpl = harness_ids(tok, view.template, True)
        stops = [list(tpl.suffix)] if tpl.suffix else []
        bag = list(dict.fromkeys(ranked + list(tpl.start) + list(tpl.suffix)))
        seqs = soft_decode(model, second, bag, tpl.start, max(1, view.batch_size or 1), p.max_len, stops)
        return Reconstruction(texts=[decode(s, tok) for s in seqs], token_ids=seqs, extra=extra,
                              note="; ".join(start_caveats(view, checks)))

    def _dim_estimate(self, view: AttackerView, first: LayerCheck) -> int:
        coords = min(s.basis.shape[0] for s in first.spans)
        rank = first.rank
        guess = max(1, (view.batch_size or 1) * self.params.tokens_per_example)
        return max(1, min(guess, rank - 1, coords - 2))
