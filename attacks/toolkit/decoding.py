"""Layer checks and sequence search shared by the span attacks.

The first adapted layer's check turns the vocabulary into a bag of tokens; the second layer's inputs are
contextual, so checking them orders the bag into sentences. In a decoder the input at position p depends
only on the prefix, which makes a left-to-right search exact and cheap (DAGER's observation); in an
encoder it depends on the whole sentence, so candidate sentences are enumerated up to a bound.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

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
from attacks.toolkit.subspace import Span, min_distance, module_span, refine, split_by_gap
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
        return max(s.rank for s in self.spans)

    def _useful(self) -> list[int]:
        keep = [i for i, s in enumerate(self.spans) if not s.vacuous]
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
    exact: bool = True,
) -> list[LayerCheck]:
    """Checks for the first ``layers`` adapted layers, lowest first; modules without a usable span are
    skipped (the attacks only read the first two, so deeper layers are never factorized). ``exact``
    asks for dropout-tolerant (trimmed) distances where training dropout masks the inputs; soft
    rankings skip that cost."""
    found = locate(view.model, list(view.modules))
    checks: list[LayerCheck] = []
    for layer, mods in attention_inputs_by_layer(found).items():
        if len(checks) >= layers:
            break
        drop = input_dropout(view.model) if layer == 0 and exact else 0.0
        pairs = [(m, module_span(view, m.name, view.modules[m.name], adaptive, rank_tol, dim, dropout=drop)) for m in mods]
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


def token_bag(model: nn.Module, first: LayerCheck, tau: float, cap: int, rank_tol: float) -> tuple[list[int], LayerCheck]:
    """Vocabulary tokens in the first layer's span (at most ``cap``), and the check used. When a secret
    column permutation forces trimmed distances, the first bag teaches which coordinates are
    displaced, the check is refit without them and the bag recomputed."""
    bag = split_by_gap(vocab_distances(model, first), tau)[:cap].tolist()
    if bag and any(s.trim > 0 for s in first.spans):
        first = first.refined([x[bag] for x in vocab_inputs(model, first.nn_modules())], rank_tol)
        bag = split_by_gap(vocab_distances(model, first), tau)[:cap].tolist()
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
