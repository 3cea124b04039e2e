"""FedSpy-style reconstruction (after arXiv 2604.06297): a joint decomposition of the adapter updates
for token extraction, then token ordering by aligning partial sequences with the full update.

Token extraction. Every module that reads the same input (q_proj and v_proj of a layer) has an
update whose rows lie in the span of that input: dL/dA = s B^T G^T X. One module's rows are rank
deficient, at most r of them, so once a batch holds more than r distinct tokens no single token lies
in one module's row space (DAGER's saturation). Stacking the modules' rows (each normalized, so that
neither dominates) gives up to (modules x r) directions of the same span(X): the joint subspace
stays exact for batches up to that many distinct tokens, where per-module checks have already
saturated. Beyond it, the strongest joint directions still carry the batch's signal and the
vocabulary is ranked softly against them.

Token ordering. Candidate partial sequences are extended left to right (a decoder's second-layer
input at a position depends only on the prefix) and each extension is kept when that partial
sequence's second-layer inputs align with the joint second-layer subspace of the full update.
Among the finished candidates, sequences are chosen one by one by how much of the observed update's
energy their inputs explain beyond those already chosen, so a batch is covered by distinct sentences
rather than by near-duplicate beams.

Closest variant under the threat model: the published ordering compares each partial sequence's
recomputed gradient with the full one, which needs raw per-step gradients and exact per-candidate
backward passes at the client's start. The server here holds one observed update (an SGD delta of
the round, or a gradient in probes) and, for SHE-LoRA and MaskCrypt, only an estimate of the start,
so the alignment is measured in the observed update's row space (input subspace), which needs no
backward pass and no exact start on the A path. Rows carry this as a note.

Assumes: plaintext (or partly visible) LoRA updates of at least two layers' attention inputs, the
public model with the global delta merged, the public template. Cost: one vocabulary-wide pass
through the first layer (cached per model), one SVD per layer of the stacked (modules x r, n)
update, and per decoding step a forward through two layers of (active prefixes x bag) sequences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from attacks.toolkit import helptext as H
from attacks.toolkit.decoding import (
    LayerCheck,
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
from attacks.toolkit.subspace import STRICT_RULES, Span, SpanRules, fit_span
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

VARIANT_NOTE = ("fedspy variant: partial sequences aligned in the observed update's row space "
                "(no per-candidate gradient recomputation: one observed update, not raw per-step gradients)")


@dataclass(frozen=True)
class FedSpyParams(AttackParams):
    """FedSpy's thresholds of the exact regime, its soft regime's bag size, and the search bounds."""

    attack: ClassVar[str] = "fedspy"
    rank_tol: float = field(default=1e-7, metadata={"help": H.RANK_TOL})
    tau1: float = field(default=1e-3, metadata={"help": H.TAU1 + " (joint span of the layer's modules)"})
    tau2: float = field(default=1e-2, metadata={"help": H.TAU2 + " (exact regime only)"})
    tokens_per_example: int = field(default=16, metadata={"help": H.TOKENS_PER_EXAMPLE})
    max_bag: int = field(default=160, metadata={"help": "most tokens in the bag, in either regime; >= 1"})
    max_len: int = field(default=48, metadata={"help": H.MAX_LEN})
    max_beams: int = field(default=8, metadata={"help": "prefixes kept per decoding step (exact regime); >= 1"})
    complete_label: bool = field(default=True, metadata={"help": H.COMPLETE_LABEL})
    null_z: float = field(default=5.0, metadata={"help": H.NULL_Z + " (used when the layer-0 span is noisy)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_fraction("rank_tol", "tau1", "tau2")
        self.require("null_z", self.null_z > 0, "> 0")
        self.require_at_least(1, "tokens_per_example", "max_bag", "max_len", "max_beams")


def joint_check(check: LayerCheck, rank_tol: float, dim: int | None = None) -> LayerCheck:
    """One span over the stacked rows of every module of ``check`` (all read the same input).

    Each module's rows are scaled to unit Frobenius norm and placed in input-feature coordinates;
    only coordinates every module shows are kept; the joint span is read by the modules' own
    ``SpanRules``. A B-path span, a single module or a secret column
    permutation (trimmed spans) leave ``check`` as it is, and so does a joint span that fills the
    few coordinates all modules show (masks that differ per module) while single modules do not."""
    spans = check.spans
    if len(spans) < 2 or any(s.path != "A" or s.trim > 0 or s.matrix is None for s in spans):
        return check
    rules = spans[0].rules or STRICT_RULES
    n_in = int(max(int(s.index.max()) for s in spans)) + 1
    seen = torch.ones(n_in, dtype=torch.bool)
    rows = []
    for s in spans:
        vis = torch.zeros(n_in, dtype=torch.bool)
        vis[s.index] = True
        seen &= vis
        full = torch.zeros(s.matrix.shape[0], n_in, dtype=torch.float64)
        full[:, s.index] = s.matrix / s.matrix.norm().clamp_min(1e-30)
        rows.append(full)
    keep = torch.nonzero(seen).flatten()
    if keep.numel() < 2:
        return check
    stacked = torch.cat(rows)
    span = fit_span(f"joint:{check.layer}", stacked, keep, keep, rank_tol, dim=dim, path="A", rules=rules)
    if span is None or (span.vacuous and not check.vacuous):
        return check
    return LayerCheck(check.layer, [check.modules[0]], [span])


def explained_energy(span: Span, inputs: Tensor) -> float:
    """Share of the observed rows' energy lying in the span of ``inputs`` (module inputs, rows).

    The inputs' span is counted at their own precision (numerical rank as numpy's ``matrix_rank``:
    singular values above largest x rows-or-columns x the dtype's epsilon). A decoder's inputs come
    in float32, and a run of one repeated token reproduces the first position's input up to float32
    rounding: at a float64 tolerance each copy's rounding counted as a new direction, and a long run
    of one token (which the decoder keeps, since every copy passes the span check exactly) seemed to
    explain most of a small model's hidden space."""
    if span.matrix is None or inputs.numel() == 0:
        return 0.0
    F = span.features(inputs)
    _, s, Vh = torch.linalg.svd(F, full_matrices=False)
    eps = torch.finfo(inputs.dtype).eps if inputs.is_floating_point() else torch.finfo(F.dtype).eps
    keep = s > s.max().clamp_min(1e-30) * max(F.shape) * eps
    Q = Vh[keep].T
    M = span.matrix
    return float((M @ Q).pow(2).sum() / M.pow(2).sum().clamp_min(1e-30))


class FedSpy(Attack):
    name: ClassVar[str] = "fedspy"
    version: ClassVar[str] = "3"  # 2: spans read by SpanRules (path by signal, noise-edge rank, z-scored bag); 3: cover counts float32 inputs' rank at float32 precision
    requires: ClassVar[frozenset[str]] = frozenset({"plaintext", "model"})
    target: ClassVar[str] = "probe"
    reads_sums: ClassVar[bool] = True  # a span holds every summed client's tokens: one batch of all
    metrics: ClassVar[Mapping[str, bool]] = RECONSTRUCTION_METRICS
    modes_differ_only_on_hidden: ClassVar[bool] = True  # adaptive only treats hidden/permuted coordinates
    control: ClassVar[Control] = Control(
        scenario="paper",
        overrides=gradient_probe([1, 2, 4]),
        metric="rouge1", floor=0.9,
        why="FedSpy (arXiv 2604.06297) reads a batch's tokens from the joint span of the modules sharing an "
            "input, exact while the distinct tokens stay below modules x rank, and orders them by alignment: the "
            "paper scenario's rank-256 client, a round-1 gradient at factors the server drew, 1-4 tweets (this "
            "variant scored 0.96-0.98 at batch 4 in the paper suite). Test scale: tiny_llama4 at rank 32, a "
            "round-2 gradient (known start, B != 0)",
        tiny=gradient_probe([1, 2], batches=2, rnd=2, rank=32, model={"name": "tiny_llama4"}),
        tiny_floor=0.9,
    )
    Params = FedSpyParams
    params: FedSpyParams

    def _reconstruct(self, view: AttackerView) -> Reconstruction:
        p = self.params
        adaptive = p.mode == "adaptive"
        checks = layer0_checks(view, adaptive, p.rank_tol, "token extraction", rules=SpanRules())
        first = joint_check(checks[0], p.rank_tol)
        second = joint_check(checks[1], p.rank_tol) if len(checks) > 1 else None
        model, tok = view.model, view.tokenizer
        n_seqs = max(1, view.batch_size or 1)
        notes = start_caveats(view, checks) + [VARIANT_NOTE]
        extra = {"rank_l0": float(first.rank), "saturated_l0": float(first.saturated)}
        if first.vacuous:
            return Reconstruction(note="; ".join(notes + [f"joint layer-0 span (rank {first.rank}) fills the usable coordinates"]),
                                  extra=extra)
        if not (is_decoder(model) and first_layer_is_position_free(model, first)):
            bag = self._soft_bag(model, first, n_seqs, position=1)
            extra["bag_size"] = float(len(bag))
            notes.append("position-dependent first layer: unordered token bag")
            return Reconstruction(texts=[tok.decode(bag, skip_special_tokens=True)] if bag else [],
                                  token_ids=[bag] if bag else None, extra=extra, note="; ".join(notes))
        exact = not first.saturated
        z = p.null_z if first.noisy else 0.0
        if z:
            notes.append(f"noisy layer-0 span (noise edge {first.noise:.1e}): token bag by z-score against the vocabulary")
        if exact:
            bag, first = token_bag(model, first, p.tau1, min(p.max_bag, 2 * first.rank + 8), p.rank_tol, z)
        else:
            bag = self._soft_bag(model, first, n_seqs)
            notes.append(f"joint layer-0 rank saturated at {first.rank}: soft token ranking")
        tpl = harness_ids(tok, view.template, True)
        extra["bag_size"] = float(len(bag))
        if not bag:
            return Reconstruction(extra=extra, note="; ".join(notes + ["no vocabulary token lies in the joint layer-0 span"]))
        if second is None:
            return Reconstruction(texts=[tok.decode(bag, skip_special_tokens=True)], token_ids=[bag], extra=extra,
                                  note="; ".join(notes + ["no second adapted layer: unordered bag"]))
        extra["rank_l1"] = float(second.rank)
        bag = list(dict.fromkeys(bag + list(tpl.suffix)))
        start = list(tpl.start)
        if len(start) >= 2 and float(prefix_distances(model, second, start)[1:].max()) >= (p.tau2 if exact else 0.5):
            start = list(tpl.lead)
        if exact and not (second.saturated or second.vacuous):
            starts = [start] if start else [[t] for t in bag]
            found = greedy_decode(model, second, bag, starts, p.tau2, p.max_len, p.max_beams)
            cands = [ids for ids, _ in sorted(found, key=lambda x: x[1]) if len(ids) > len(start)]
        else:
            stops = [list(tpl.suffix)] if tpl.suffix else []
            cands = soft_decode(model, second, bag, start, min(len(bag), 2 * n_seqs), p.max_len, stops)
            notes.append("second-layer alignment without threshold: order is best-effort")
        seqs = cover(model, second, cands, len(start), n_seqs)
        if seqs and p.complete_label and view.task == "classification":
            seqs = complete_labels(view, seqs, adaptive)
        extra["n_sequences"] = float(len(seqs))
        return Reconstruction(texts=[decode(s, tok) for s in seqs], token_ids=seqs, extra=extra, note="; ".join(notes))

    def _soft_bag(self, model, first: LayerCheck, n_seqs: int, position: int = 0) -> list[int]:
        """The vocabulary tokens nearest the joint subspace, as many as the batch plausibly holds."""
        p = self.params
        d = vocab_distances(model, first, position)
        cap = min(p.max_bag, n_seqs * p.tokens_per_example)
        exact = select_tokens(d, p.tau1, cap, p.null_z if first.noisy else 0.0).tolist()
        return exact or torch.argsort(d)[:cap].tolist()


def cover(model, check: LayerCheck, cands: Sequence[Sequence[int]], start_len: int, n_seqs: int) -> list[list[int]]:
    """Choose ``n_seqs`` candidates greedily by the observed energy their second-layer inputs explain
    beyond the candidates already chosen (prefixes of a longer candidate and repeats are skipped)."""
    pool = [list(c) for c in dict.fromkeys(tuple(c) for c in cands) if len(c) > start_len]
    pool = [c for c in pool if not any(len(o) > len(c) and o[: len(c)] == c for o in pool)]
    if len(pool) <= 1 or n_seqs >= len(pool):
        return pool[:n_seqs] if n_seqs < len(pool) else pool
    span = check.spans[0]
    inputs = [capture_inputs(model, [check.modules[0].module], torch.tensor([c]))[0][0, start_len:] for c in pool]
    chosen: list[int] = []
    base = 0.0
    for _ in range(n_seqs):
        gains = []
        for i, x in enumerate(inputs):
            if i in chosen:
                gains.append(-1.0)
                continue
            both = torch.cat([inputs[j] for j in chosen] + [x])
            gains.append(explained_energy(span, both) - base)
        best = max(range(len(pool)), key=lambda i: gains[i])
        if gains[best] < 0:
            break
        chosen.append(best)
        base += gains[best]
    return [pool[i] for i in chosen]
