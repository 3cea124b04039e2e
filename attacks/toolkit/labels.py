"""Completing each recovered prompt with its label token, chosen by the gradient it would cause.

A decoder classifier's label is the last token and no span check can see it (its output has no target).
But the loss sits on that token, so the update depends on it. Candidates come from two rankings: the
public model's next-token probabilities, and a first-order score of agreement with the update (for a
label l the LoRA gradient is J^T (p - e_l); its inner product with the observed update t is
p.z - z_l with z = J t, a directional derivative of the logits taken by central differences, divided
by |p - e_l| as a crude norm correction). Each candidate's exact gradient is then recomputed at the
client's starting point (one batched pass per round of candidates) and the combination whose summed
gradient best matches the update wins (cosine over the last two adapted layers). The candidate set
grows until a near-perfect match appears or the budget is spent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from attacks.toolkit.lorahooks import (
    attached,
    flatten_batches,
    label_gradient_batches,
    observed_target,
    unflatten,
)
from attacks.toolkit.probing import FromLayer, device_of, locate
from benchmark.contract import AttackerView
from benchmark.contract.progress import tick

_EXACT = 0.999  # a cosine this close to 1 means the label combination is found


def label_layers(view: AttackerView, layers: int = 2) -> list[str]:
    """Modules of the last ``layers`` adapted layers: the label's influence is most direct there and
    each candidate's exact gradient needs a backward pass through those layers only."""
    found = locate(view.model, list(view.modules))
    keep = sorted({am.layer for am in found.values()})[-layers:]
    return [n for n, am in found.items() if am.layer in keep]


def complete_labels(view: AttackerView, seqs: Sequence[Sequence[int]], adaptive: bool, top_k: int = 6,
                    budget: int = 24) -> list[list[int]]:
    """``seqs`` with one predicted label token appended to each (unchanged when nothing fits)."""
    seqs = [list(s) for s in seqs]
    if not seqs or view.prev is None or view.model is None:
        return seqs
    names = [n for n in label_layers(view) if n in view.prev]
    target, masks = observed_target(view, names, adaptive)
    if target.numel() == 0 or float(target.norm()) == 0.0:
        return seqs
    target = target.float()
    factors = {n: view.prev[n] for n in names}
    # every pass below hooks only the label layers: the blocks under them run once per sequence
    runner = FromLayer(view.model, min(am.layer for am in locate(view.model, names).values()))
    rankings = [_rankings(view, factors, s, target, masks, runner) for s in seqs]
    cands: list[list[int]] = [[] for _ in seqs]
    grads = _Candidates(len(seqs), target)
    choice = [0] * len(seqs)
    single_step = view.kind == "grad" or (view.kind == "sgd" and view.local_steps == 1)
    # The top pick is usually right, so it is tried alone first; a multi-step delta has no exact
    # match to stop at, so it gets one round.
    depths = [1] + list(range(top_k, budget + 1, top_k)) if single_step else [top_k]
    for depth in depths:
        for i, s in enumerate(seqs):
            tick(f"label candidates (depth {depth})", i + 1, len(seqs))
            new = [t for r in rankings[i] for t in r[:depth] if t not in cands[i]]
            new = list(dict.fromkeys(new))
            if new:
                grads.add(i, _label_grads(view, factors, s, new, masks, runner))
                cands[i] += new
        choice, best = _best_combination(grads)
        if best >= _EXACT:
            break
    return [s + [c[j]] for s, c, j in zip(seqs, cands, choice)]


def _rankings(view: AttackerView, factors: dict, seq: list[int], target: Tensor, masks: dict,
              runner: FromLayer) -> list[list[int]]:
    """Vocabulary orders by model probability and by (normalized) first-order gradient agreement."""
    ids = torch.tensor([seq], device=device_of(view.model))
    with attached(view.model, factors) as leaves:
        shapes = {n: (leaves[n][0].shape, leaves[n][1].shape) for n in factors}
        nudge = unflatten(target / target.norm(), masks, shapes)
        z, logits = _logit_derivative(runner, ids, leaves, nudge)
    p = F.softmax(logits, -1)
    norm = ((p * p).sum() - 2 * p + 1).clamp_min(1e-12).sqrt()  # |p - e_l|
    keep = 4 * 24
    return [torch.topk(p, keep).indices.tolist(), torch.topk(-z / norm, keep).indices.tolist()]


def _label_grads(view: AttackerView, factors: dict, seq: list[int], labels: list[int], masks: dict,
                 runner: FromLayer) -> Tensor:
    """Exact flattened gradient of the label loss for each candidate label (one forward pass): (K, D)."""
    return flatten_batches(label_gradient_batches(view.model, factors, seq, labels, runner), masks).float().cpu()


@torch.no_grad()
def _logit_derivative(runner: FromLayer, ids: Tensor, leaves: dict, nudge: dict, tries: int = 4) -> tuple[Tensor, Tensor]:
    """Central difference of the last position's logits along ``nudge`` (step grown until it shows),
    centred so that only differences between labels remain; also returns the unperturbed logits."""
    base = runner.last_logits(ids)[0].float()
    size = sum(float(a.norm() ** 2 + b.norm() ** 2) for a, b in leaves.values()) ** 0.5
    eps = 1e-2 * max(size, 1e-3)  # a 1% move of the factors: well above float32 noise, still linear
    diff = torch.zeros_like(base)
    for _ in range(tries):
        outs = []
        for sign in (1.0, -1.0):
            _shift(leaves, nudge, sign * eps)
            outs.append(runner.last_logits(ids)[0].float())
            _shift(leaves, nudge, -sign * eps)
        diff = (outs[0] - outs[1]) / 2
        if float(diff.norm()) > 1e-4 * float(base.norm()):
            break
        eps *= 10
    z = diff / eps
    return z - (F.softmax(base, -1) @ z), base


def _shift(leaves: dict, nudge: dict, step: float) -> None:
    for n, (dA, dB) in nudge.items():
        leaves[n][0].add_(step * dA.to(leaves[n][0]))
        leaves[n][1].add_(step * dB.to(leaves[n][1]))


class _Candidates:
    """Each sequence's candidate label gradients, kept in the blocks they were computed in (never
    re-stacked), with their inner products with the target and squared norms computed once."""

    def __init__(self, n: int, target: Tensor) -> None:
        self.target = target
        self.blocks: list[list[Tensor]] = [[] for _ in range(n)]
        self.dots = [target.new_zeros(0) for _ in range(n)]
        self.sq = [target.new_zeros(0) for _ in range(n)]

    def add(self, i: int, block: Tensor) -> None:
        self.blocks[i].append(block)
        self.dots[i] = torch.cat([self.dots[i], block @ self.target])
        self.sq[i] = torch.cat([self.sq[i], torch.einsum("kd,kd->k", block, block)])

    def row(self, i: int, k: int) -> Tensor:
        for block in self.blocks[i]:
            if k < block.shape[0]:
                return block[k]
            k -= block.shape[0]
        raise IndexError(k)

    def times(self, i: int, v: Tensor) -> Tensor:
        """Sequence ``i``'s candidates times ``v`` (a vector, or a matrix of column vectors)."""
        return torch.cat([block @ v for block in self.blocks[i]])


def _best_combination(g: _Candidates) -> tuple[list[int], float]:
    """Indices (one per sequence) maximizing cos(sum of chosen gradients, target), and that cosine.
    Exhaustive for up to two sequences, coordinate ascent beyond (a running sum of the chosen
    gradients, one candidate swapped per step); both through inner products only, so no candidate
    sum is ever materialized."""
    target, dots, sq, n = g.target, g.dots, g.sq, len(g.blocks)
    tn = target.norm().clamp_min(1e-30)
    if n == 1:
        cos = dots[0] / (sq[0].clamp_min(1e-30).sqrt() * tn)
        k = int(torch.argmax(cos))
        return [k], float(cos[k])
    if n == 2:
        cross = torch.cat([g.times(0, block.T) for block in g.blocks[1]], dim=1)
        norm = (sq[0][:, None] + sq[1][None, :] + 2 * cross).clamp_min(1e-30).sqrt()
        cos = (dots[0][:, None] + dots[1][None, :]) / (norm * tn)
        flat = int(torch.argmax(cos))
        i, j = divmod(flat, cos.shape[1])
        return [i, j], float(cos[i, j])
    arg = [0] * n
    total = sum(g.row(s, 0) for s in range(n))
    for _ in range(3):
        for s in range(n):
            rest = total - g.row(s, arg[s])
            norm = ((rest * rest).sum() + sq[s] + 2 * g.times(s, rest)).clamp_min(1e-30).sqrt()
            arg[s] = int(torch.argmax((rest @ target + dots[s]) / norm))
            total = rest + g.row(s, arg[s])
    return arg, float(total @ target / (total.norm().clamp_min(1e-30) * tn))
