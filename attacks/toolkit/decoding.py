"""Layer checks and sequence search shared by the span attacks.

The first adapted layer's check turns the vocabulary into a bag of tokens; the second layer's inputs are
contextual, so checking them orders the bag into sentences. In a decoder the input at position p depends
only on the prefix, which makes a left-to-right search exact and cheap (DAGER's observation); in an
encoder it depends on the whole sentence, so candidate sentences are enumerated up to a bound.

Under noise (DP, quantization) members no longer sit at distance ~0: ``select_tokens`` can z-score
the distances against the vocabulary itself (almost all of it non-members, so it is the null), and
``beam_decode`` lets a sentence whose best extension just misses the threshold go on as a near-miss
instead of dying, as the original DAGER does.
"""

from __future__ import annotations

import difflib
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from attacks.toolkit.probing import (
    AdaptedModule,
    attention_inputs_by_layer,
    capture_inputs,
    last_position_inputs,
    locate,
    position_free,
    vocab_inputs,
)
from attacks.toolkit.subspace import (
    STRICT_RULES,
    Span,
    SpanRules,
    min_distance,
    module_span,
    refine,
    split_by_gap,
)
from benchmark.contract import AttackerView


@dataclass
class LayerCheck:
    """The spans of one layer's attention-input modules; a vector passes if any span holds it."""

    layer: int
    modules: list[AdaptedModule]
    spans: list[Span]

    @property
    def saturated(self) -> bool:
        return all(s.saturated for s in self.spans)

    @property
    def vacuous(self) -> bool:
        return all(s.vacuous for s in self.spans)

    @property
    def rank(self) -> int:
        return max(self.spans[i].rank for i in self._useful())

    @property
    def noisy(self) -> bool:
        """Any usable span is perturbed by noise above float rounding (``Span.noisy``)."""
        return any(self.spans[i].noisy for i in self._useful())

    @property
    def noise(self) -> float:
        return max(self.spans[i].noise for i in self._useful())

    def _useful(self) -> list[int]:
        """The non-vacuous spans, less the blurred ones when one of them is clean (member-distance
        bound under its rules' ``clean_error``). Blurred: no noise above float rounding, yet a bound
        over ``clean_error``, as a span whose rank the noise edge could not separate from a rounding
        tail (SmolLM2's round-2 q_proj, its tail one decade under the signal): it would pass
        non-members that the clean span rejects. A noisy span stays (it sets the noise-tolerant mode)."""
        keep = [i for i, s in enumerate(self.spans) if not s.vacuous]
        rules = [s.rules for s in self.spans]
        clean = [i for i in keep if rules[i] is not None and self.spans[i].member_error <= rules[i].clean_error]
        if clean:
            keep = [i for i in keep if i in clean or self.spans[i].noisy]
        return keep or list(range(len(self.spans)))

    def distance(self, inputs: Sequence[Tensor]) -> Tensor:
        keep = self._useful()
        return min_distance([self.spans[i] for i in keep], [inputs[i] for i in keep])

    def nn_modules(self) -> list[nn.Module]:
        return [m.module for m in self.modules]

    def refined(self, inputs: Sequence[Tensor], rank_tol: float) -> LayerCheck:
        """This check with permutation-displaced coordinates removed, learnt from member inputs."""
        return LayerCheck(self.layer, self.modules, [refine(s, x, rank_tol) for s, x in zip(self.spans, inputs)])


def layer_checks(
    view: AttackerView, adaptive: bool, rank_tol: float, dim: int | None = None, layers: int = 2,
    exact: bool = True, rules: SpanRules = STRICT_RULES,
) -> list[LayerCheck]:
    """Checks for the first ``layers`` adapted layers, lowest first; modules without a usable span are
    skipped (the attacks only read the first two, so deeper layers are never factorized). ``exact``
    asks for dropout-tolerant (trimmed) distances where training dropout masks the inputs; soft
    rankings skip that cost. ``rules`` say how each span is read (``SpanRules``); the default is the
    first version's, which the attacks that did not opt in keep."""
    found = locate(view.model, list(view.modules))
    checks: list[LayerCheck] = []
    for layer, mods in attention_inputs_by_layer(found).items():
        if len(checks) >= layers:
            break
        drop = input_dropout(view.model) if layer == 0 and exact else 0.0
        pairs = [(m, module_span(view, m.name, view.modules[m.name], adaptive, rank_tol, dim, dropout=drop, rules=rules))
                 for m in mods]
        pairs = [(m, s) for m, s in pairs if s is not None]
        if pairs:
            checks.append(LayerCheck(layer, [m for m, _ in pairs], [s for _, s in pairs]))
    return checks


def input_dropout(model: nn.Module) -> float:
    """Dropout a client's training applies to the first layer's input (BERT/GPT-2 embedding dropout;
    Llama has none): it zeroes input coordinates at random, which exact span checks must tolerate."""
    cfg = getattr(model, "config", None)
    for key in ("hidden_dropout_prob", "embd_pdrop", "dropout"):
        value = getattr(cfg, key, None)
        if isinstance(value, float) and value > 0:
            return value
    return 0.0


def vocab_distances(model: nn.Module, check: LayerCheck, position: int = 0) -> Tensor:
    """Distance of every vocabulary token (placed at ``position``) to the first layer's spans: (V,)."""
    return check.distance(vocab_inputs(model, check.nn_modules(), position))


def null_z(d: Tensor) -> Tensor:
    """Each distance's robust z-score against the vocabulary's own: the log-odds log(d / (1 - d))
    (which spreads distances near 0 and 1 alike), centred on its median and scaled by its MAD.
    Almost every vocabulary token is a non-member, so the vocabulary is the null distribution, and
    median and MAD ignore the few members that the mean and standard deviation would absorb."""
    x = d.double().clamp(1e-9, 1 - 1e-9)
    lo = torch.log(x) - torch.log1p(-x)
    med = lo.median()
    mad = 1.4826 * (lo - med).abs().median()
    return (lo - med) / mad.clamp_min(1e-12)


CLEAN_GAP = 2.5  # a clean span's members end at a step this large in the sorted distances
# Distances are computed in float32 (``Span.distance``, accurate to ~1e-6): below this every token
# lies in the span exactly, and a ratio between two such distances is rounding, not a step. Members
# that reach the check through different modules sit at different rounding levels (a decoder's
# first token is in v_proj's span only, ~1e-6, the others in q_proj's too, ~1e-7).
ROUNDING_DISTANCE = 1e-5


def select_tokens(d: Tensor, tau: float, cap: int, z: float = 0.0, least: int = 0, nearest: int = 0) -> Tensor:
    """Indices of the member tokens among distances ``d``, nearest first, at most ``cap``: the clearly
    small distances (``split_by_gap``), or with ``z > 0`` (noise-tolerant mode) those at least ``z``
    robust standard deviations below the vocabulary (``null_z``).

    ``least > 0`` marks a clean span expected to hold at least ``least`` members: there the members end
    at the largest step (``CLEAN_GAP`` or more) between the ``least``-th and ``cap``-th nearest
    distance, when one lies under ``tau``. A lenient ``tau`` (the original DAGER's 0.05) otherwise
    admits a vocabulary's cluster of untrained tokens (SmolLM2's special and byte tokens share nearly
    one embedding, about 0.017 from a span holding the mean direction) that lies a few times farther
    than the batch's own tokens, and the decoder then wanders through them.

    ``nearest > 0`` (distances all displaced alike, as through an estimated start): with ``z > 0``,
    the z-score bag unless more than ``cap`` tokens stand out (the vocabulary is then no null), in
    which case, as with ``z = 0``, the ``nearest`` tokens nearest the span (at most ``cap``)."""
    if nearest > 0 and (z <= 0 or int((null_z(d) < -z).sum()) > cap):
        return torch.argsort(d)[: min(nearest, cap)]
    if z <= 0:
        got = split_by_gap(d, tau)[:cap]
        return _clean_cut(d, got, least) if least > 0 else got
    scores = null_z(d)
    order = torch.argsort(scores)
    return order[scores[order] < -z][:cap]


def _clean_cut(d: Tensor, got: Tensor, least: int) -> Tensor:
    if got.numel() <= least + 1:
        return got
    vals = d[got].clamp_min(ROUNDING_DISTANCE)  # no step among exact members (float32 rounding)
    steps = vals[least:] / vals[least - 1 : -1]  # steps[j]: from the (least + j)-th nearest to the next
    i = int(torch.argmax(steps))
    return got[: least + i] if float(steps[i]) >= CLEAN_GAP else got


def token_bag(model: nn.Module, first: LayerCheck, tau: float, cap: int, rank_tol: float,
              z: float = 0.0, least: int = 0, nearest: int = 0) -> tuple[list[int], LayerCheck]:
    """Vocabulary tokens in the first layer's span (at most ``cap``; ``z`` and ``least`` as in
    ``select_tokens``), and the check used. When a secret column permutation forces trimmed distances,
    the first bag teaches which coordinates are displaced, the check is refit without them and the bag
    recomputed."""
    bag = select_tokens(vocab_distances(model, first), tau, cap, z, least, nearest).tolist()
    if bag and any(s.trim > 0 for s in first.spans):
        first = first.refined([x[bag] for x in vocab_inputs(model, first.nn_modules())], rank_tol)
        bag = select_tokens(vocab_distances(model, first), tau, cap, z, least, nearest).tolist()
    return bag, first


def first_layer_is_position_free(model: nn.Module, check: LayerCheck) -> bool:
    return position_free(model, check.modules[0].module)


def _last_distances(model: nn.Module, check: LayerCheck, seqs: Tensor) -> Tensor:
    return check.distance(last_position_inputs(model, check.nn_modules(), seqs))


def prefix_distances(model: nn.Module, check: LayerCheck, ids: Sequence[int]) -> Tensor:
    """Second-layer distance at every position of one sequence (decoder: inputs are prefix-causal)."""
    got = capture_inputs(model, check.nn_modules(), torch.tensor([list(ids)]))
    return check.distance([g[0] for g in got])


def greedy_decode(
    model: nn.Module,
    check: LayerCheck,
    bag: Sequence[int],
    starts: Sequence[Sequence[int]],
    tau: float,
    max_len: int,
    max_beams: int = 64,
) -> list[tuple[list[int], float]]:
    """Extend every prefix with every bag token whose second-layer input lies in the span; a prefix with
    no passing extension is finished. Returns (ids, mean distance of the extensions) pairs."""
    active: list[tuple[list[int], list[float]]] = [(list(s), []) for s in starts]
    finished: list[tuple[list[int], float]] = []
    bag_t = torch.tensor(list(bag), dtype=torch.long)
    for _ in range(max_len):
        if not active or bag_t.numel() == 0:
            break
        prefixes = torch.tensor([ids for ids, _ in active], dtype=torch.long)
        cands = torch.cat([prefixes.repeat_interleave(len(bag_t), 0), bag_t.repeat(len(active)).unsqueeze(1)], 1)
        d = _last_distances(model, check, cands).view(len(active), len(bag_t))
        grown: list[tuple[list[int], list[float]]] = []
        for i, (ids, ds) in enumerate(active):
            ok = torch.nonzero(d[i] < tau).flatten().tolist()
            if not ok:
                finished.append((ids, _mean(ds)))
            grown += [(ids + [int(bag_t[j])], ds + [float(d[i, j])]) for j in ok]
        grown.sort(key=lambda x: x[1][-1])
        active = grown[:max_beams]
    finished += [(ids, _mean(ds)) for ids, ds in active]
    return finished


@dataclass
class _Beam:
    ids: list[int]
    ds: list[float] = field(default_factory=list)
    misses: int = 0  # extensions taken although they failed the threshold
    run: int = 0  # consecutive such extensions at the end
    dying: bool = False  # a near-miss of a prefix that had no passing extension


@dataclass(frozen=True)
class Decoded:
    """A decoded sequence, its mean second-layer distance over its extensions, and how many of its
    extensions missed the threshold (0: every step passed, an exact candidate)."""

    ids: list[int]
    score: float
    misses: int = 0


def beam_decode(
    model: nn.Module,
    check: LayerCheck,
    bag: Sequence[int],
    starts: Sequence[Sequence[int]],
    tau: float,
    max_len: int,
    max_beams: int = 64,
    near_misses: int = 0,
    stops: Sequence[Sequence[int]] = (),
    patience: int = 3,
    distinct: float = 0.7,
    row_z: float = 0.0,
    clean: bool = False,
) -> list[Decoded]:
    """``greedy_decode`` with the original DAGER's near-miss continuation.

    Prefixes are extended by every bag token whose second-layer input passes ``tau`` (at most
    ``max_beams`` kept, by ``_round_robin``); a prefix with no passing extension is finished. Besides,
    each step's best failing extension of every prefix competes for ``near_misses`` slots (lowest
    mean distance first, each sharing under ``distinct`` of its positions with those already kept):
    these go on as near-miss beams, so that one extension pushed over the threshold by noise or a
    loose span does not end a sentence. Prefixes with no passing extension come first (their
    sentence would end there), and a sentence that reached a stop sequence exactly frees no slot for
    the rest of the search. A near-miss beam that misses ``patience`` times in a row is dropped; any
    beam ending with a stop sequence is finished. ``row_z > 0``: an extension passes only if it also
    stands ``row_z`` robust standard deviations below its prefix's other extensions (``null_z`` of
    the row; needs 8 or more bag tokens), which a loose ``tau`` on a crowded span cannot ensure.
    ``clean`` (a span perturbed by float rounding only): every true step passes, so a near-miss beam
    comes only from a prefix with no passing extension and only while fewer than ``near_misses``
    exact sentences have ended; an exact sentence is never extended by near-misses once the batch
    is full (a sentence truncated by the client's sequence length would otherwise grow)."""
    bag_t = torch.tensor(list(bag), dtype=torch.long)
    active = [_Beam(list(s)) for s in starts]
    shortest = min((len(s) for s in starts), default=0)
    done: list[Decoded] = []
    stop_lists = [list(s) for s in stops if s]
    stopped: list[Decoded] = []  # exact beams that reached a stop sequence
    for _ in range(max_len):
        if not active or bag_t.numel() == 0:
            break
        prefixes = torch.tensor([b.ids for b in active], dtype=torch.long)
        cands = torch.cat([prefixes.repeat_interleave(len(bag_t), 0), bag_t.repeat(len(active)).unsqueeze(1)], 1)
        d = _last_distances(model, check, cands).view(len(active), len(bag_t))
        passes = d < tau
        if row_z > 0 and len(bag_t) >= 8:
            passes &= torch.stack([null_z(row) for row in d]) < -row_z
        children, missed = _extend(active, d, passes, bag_t, patience if near_misses > 0 else 0, done)
        if clean:
            ended = {tuple(f.ids) for f in done if f.misses == 0 and len(f.ids) > shortest}
            missed = [m for m in missed if m.dying] if len(ended) < near_misses else []
        grown = _round_robin(children, max_beams) + _pick_distinct(missed, near_misses - len(stopped), distinct)
        active = []
        for b in grown:
            if any(b.ids[-len(s):] == s for s in stop_lists):
                done.append(Decoded(b.ids, _mean(b.ds), b.misses))
                stopped += [done[-1]] if b.misses == 0 else []
            else:
                active.append(b)
        active = _prune(active, stopped, near_misses, distinct)
    done += [Decoded(b.ids, _mean(b.ds), b.misses) for b in active]
    return done


def _prune(active: list[_Beam], stopped: list[Decoded], n: int, distinct: float) -> list[_Beam]:
    """Once ``n`` distinct exact sentences have reached a stop sequence, only exact beams that are
    still nearer than the n-th of them can displace one in ``fill_batch``: the rest is dropped
    (a loose threshold would otherwise carry them to ``max_len``)."""
    if n <= 0 or len(stopped) < n:
        return active
    best: list[Decoded] = []
    for f in sorted(stopped, key=lambda f: f.score):
        if not any(_similar(f.ids, g.ids, distinct) for g in best):
            best.append(f)
    if len(best) < n:
        return active
    bound = best[n - 1].score
    return [b for b in active if b.misses == 0 and _mean(b.ds) <= bound]


def _extend(active: list[_Beam], d: Tensor, passes: Tensor, bag_t: Tensor, patience: int,
            done: list[Decoded]) -> tuple[list[list[_Beam]], list[_Beam]]:
    """Each prefix's passing children (nearest first) and, while it has missed fewer than
    ``patience`` times in a row, its best failing extension; prefixes with no passing child are
    recorded in ``done``."""
    children: list[list[_Beam]] = []
    missed: list[_Beam] = []
    for i, b in enumerate(active):
        ok = torch.nonzero(passes[i]).flatten().tolist()
        if not ok:
            done.append(Decoded(b.ids, _mean(b.ds), b.misses))
        kids = [_Beam(b.ids + [int(bag_t[j])], b.ds + [float(d[i, j])], b.misses) for j in ok]
        children.append(sorted(kids, key=lambda x: x.ds[-1]))
        fail = d[i].masked_fill(passes[i], float("inf"))
        j = int(torch.argmin(fail))
        if b.run < patience and math.isfinite(float(fail[j])):
            missed.append(_Beam(b.ids + [int(bag_t[j])], b.ds + [float(d[i, j])], b.misses + 1, b.run + 1, not ok))
    return children, missed


def _pick_distinct(missed: list[_Beam], slots: int, distinct: float) -> list[_Beam]:
    """Up to ``slots`` near-miss beams: those of dying prefixes first, then by mean distance, each
    sharing under ``distinct`` of its positions with those already picked."""
    kept: list[_Beam] = []
    for m in sorted(missed, key=lambda x: (not x.dying, _mean(x.ds))):
        if len(kept) >= slots:
            break
        if not any(_similar(m.ids, k.ids, distinct) for k in kept):
            kept.append(m)
    return kept


def _round_robin(children: list[list[_Beam]], limit: int) -> list[_Beam]:
    """At most ``limit`` beams: every prefix's best child first (nearest first), then every prefix's
    second best, and so on. A plain nearest-first cut lets the children of one prefix (a loose
    threshold passes many) crowd out the only child of another, which may be a true sentence."""
    out: list[_Beam] = []
    depth = 0
    while len(out) < limit:
        layer = sorted((c[depth] for c in children if len(c) > depth), key=lambda x: x.ds[-1])
        if not layer:
            break
        out += layer[: limit - len(out)]
        depth += 1
    return out


def _similar(a: Sequence[int], b: Sequence[int], share: float) -> bool:
    """The longest matching subsequence of ``a`` and ``b`` covers ``share`` or more of the shorter
    one. The original compares position by position, which calls a sentence with one token inserted
    distinct from itself (every later position shifts); a truncated copy still counts as similar."""
    n = min(len(a), len(b))
    if n == 0:
        return False
    blocks = difflib.SequenceMatcher(None, list(a), list(b), autojunk=False).get_matching_blocks()
    return sum(m.size for m in blocks) >= share * n


def fill_batch(found: Sequence[Decoded], start_len: int, n_seqs: int, distinct: float = 0.7,
               stops: Sequence[Sequence[int]] = (), clean: bool = False) -> list[list[int]]:
    """``n_seqs`` sequences as the original DAGER picks them: the exact candidates first (none that a
    longer exact result extends, lowest mean distance first), then the near-misses, each taken only
    when it shares under ``distinct`` of its new positions with every sequence already chosen (a loose
    threshold passes variants of one sentence), then the best of what is left; fewer only when fewer
    candidates exist. With ``stops`` (the template's known ending), sequences that reached one come
    before those that did not: an exact sequence that stopped short of the ending is truncated,
    where a near-miss that reached it has the true sentence's shape. ``clean`` (a span perturbed by
    float rounding only): a near-miss that extends an exact sequence is no candidate, since every
    true step of a clean span passes (the exact one is a sentence the client's sequence length cut
    before the ending)."""
    seqs: dict[tuple[int, ...], Decoded] = {}
    for f in sorted(found, key=lambda f: (f.misses > 0, f.score)):
        if len(f.ids) > start_len:
            seqs.setdefault(tuple(f.ids), f)  # a sequence found twice keeps its better record

    def extended(f: Decoded) -> bool:  # by a longer result at least as exact
        n = len(f.ids)
        return any(len(o) > n and list(o[:n]) == f.ids and (g.misses == 0 or f.misses > 0) for o, g in seqs.items())

    def overgrown(f: Decoded) -> bool:  # a near-miss extension of an exact sequence, on a clean span
        return clean and f.misses > 0 and any(
            g.misses == 0 and len(o) < len(f.ids) and f.ids[: len(o)] == list(o) for o, g in seqs.items())

    ends = [list(s) for s in stops if s]

    def order(f: Decoded) -> tuple[bool, bool, float]:
        complete = not ends or any(f.ids[-len(s):] == s for s in ends)
        return not complete, f.misses > 0, f.score

    chosen: list[list[int]] = []
    for f in sorted((f for f in seqs.values() if not extended(f) and not overgrown(f)), key=order):
        if len(chosen) >= n_seqs:
            break
        if not any(_similar(f.ids[start_len:], c[start_len:], distinct) for c in chosen):
            chosen.append(f.ids)
    rest = sorted((f for f in seqs.values() if f.ids not in chosen and not overgrown(f)), key=order)
    chosen += [f.ids for f in rest[: max(0, n_seqs - len(chosen))]]
    return chosen


def soft_decode(
    model: nn.Module,
    check: LayerCheck,
    bag: Sequence[int],
    start: Sequence[int],
    n_seqs: int,
    max_len: int,
    stops: Sequence[Sequence[int]] = (),
    max_repeat: int = 2,
) -> list[list[int]]:
    """No threshold: branch into the ``n_seqs`` best first continuations, then follow each sequence's
    best next token until it ends with a stop sequence or reaches ``max_len`` new tokens. A token
    already used ``max_repeat`` times in a sequence is not offered again, which keeps noisy scores
    from looping on one token."""
    bag_t = torch.tensor(list(bag), dtype=torch.long)
    if bag_t.numel() == 0:
        return []
    if start:
        seqs = [list(start)]
    else:  # no known start: seed with the bag tokens themselves
        seqs = [[int(t)] for t in bag_t[: max(n_seqs, 1)]]
    done: list[list[int]] = []
    for step in range(max_len):
        if not seqs:
            break
        prefixes = torch.tensor(seqs, dtype=torch.long)
        cands = torch.cat([prefixes.repeat_interleave(len(bag_t), 0), bag_t.repeat(len(seqs)).unsqueeze(1)], 1)
        d = _last_distances(model, check, cands).view(len(seqs), len(bag_t))
        for i, s in enumerate(seqs):
            used = torch.tensor(s[len(start) :], dtype=torch.long)
            if used.numel():
                counts = (bag_t.unsqueeze(1) == used.unsqueeze(0)).sum(1)
                d[i, counts >= max_repeat] = float("inf")
        if step == 0 and len(seqs) == 1 and n_seqs > 1:
            best = torch.topk(d[0], min(n_seqs, len(bag_t)), largest=False).indices.tolist()
            seqs = [seqs[0] + [int(bag_t[j])] for j in best]
        else:
            seqs = [s + [int(bag_t[int(torch.argmin(d[i]))])] for i, s in enumerate(seqs)]
        still = []
        for s in seqs:
            (done if any(stop and s[-len(stop) :] == list(stop) for stop in stops) else still).append(s)
        seqs = still
    return done + seqs


def encoder_decode(
    model: nn.Module,
    first: LayerCheck,
    second: LayerCheck | None,
    per_position: Sequence[Sequence[int]],
    n_seqs: int,
    end_ids: set[int],
    max_combos: int = 20000,
    seed: int = 0,
) -> list[list[int]]:
    """Bounded search for encoders: candidate sentences are products of the per-position token sets
    (ending where an end token such as [SEP] is possible), scored by their mean second-layer distance.
    Enumerated exhaustively up to ``max_combos``, sampled beyond."""
    if not per_position or any(len(c) == 0 for c in per_position[:1]):
        return []
    lengths = [p + 1 for p, c in enumerate(per_position) if end_ids & set(c)] or [len(per_position)]
    sentences: list[tuple[int, ...]] = []
    rng = random.Random(seed)
    budget = max(1, max_combos // len(lengths))
    for L in lengths:
        sets = [list(c) for c in per_position[:L]]
        total = 1
        for c in sets:
            total *= len(c)
        if total <= budget:
            sentences += list(itertools.product(*sets))
        else:
            sentences += list({tuple(rng.choice(c) for c in sets) for _ in range(budget)})
    if second is None or len(sentences) == 1:
        return [list(s) for s in sentences[:n_seqs]]
    scores = []
    for s in sentences:
        got = capture_inputs(model, second.nn_modules(), torch.tensor([list(s)]))
        scores.append(float(second.distance([g[0] for g in got]).mean()))
    order = sorted(range(len(sentences)), key=lambda i: scores[i])
    return [list(sentences[i]) for i in order[:n_seqs]]


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0
