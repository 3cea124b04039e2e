"""Discrete refinement of gradient-matching results (LAMP's swap steps, scored exactly).

Continuous relaxation finds roughly the right tokens but often in the wrong order. Here each example's
text is perturbed by swapping two tokens, moving one, or substituting a candidate token; the exact
gradient of every perturbed example is computed in one batched pass (per-example LoRA gradients from
captured activations), the batch gradient is rebuilt with the other examples held fixed, and the
change that best raises the cosine with the observed update is kept, until no change helps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from attacks.toolkit.lorahooks import flatten_grads, per_example_grads
from attacks.toolkit.probing import device_of
from benchmark.contract import AttackerView


def example_grads(view: AttackerView, names: Sequence[str], masks: dict, seqs: Sequence[Sequence[int]],
                  labels: Sequence[int], chunk: int = 128) -> Tensor:
    """Flattened label-loss gradient of each (sequence, label) pair, sequences of equal length."""
    factors = {n: view.prev[n] for n in names}
    rows: list[Tensor] = []
    for start in range(0, len(seqs), chunk):
        ids = torch.tensor([list(s) for s in seqs[start : start + chunk]])
        lab = torch.tensor(list(labels[start : start + chunk]), device=device_of(view.model))

        def losses(logits: Tensor, lab: Tensor = lab) -> Tensor:
            return F.cross_entropy(logits[:, -1].float(), lab, reduction="none")

        per = per_example_grads(view.model, factors, ids, losses)
        rows += [flatten_grads({n: (a[k], b[k]) for n, (a, b) in per.items()}, masks).float().cpu()
                 for k in range(ids.shape[0])]
    return torch.stack(rows)


def _variants(seq: list[int], lo: int, hi: int, pool: Sequence[int]) -> list[list[int]]:
    """Swaps, single-token moves and substitutions inside positions [lo, hi)."""
    out: set[tuple[int, ...]] = set()
    for i in range(lo, hi):
        for j in range(lo, hi):
            if i == j:
                continue
            s = list(seq)
            s[i], s[j] = s[j], s[i]
            out.add(tuple(s))
            m = list(seq)
            tok = m.pop(i)
            m.insert(j, tok)
            out.add(tuple(m))
        for tok in pool:
            if tok != seq[i]:
                s = list(seq)
                s[i] = tok
                out.add(tuple(s))
    out.discard(tuple(seq))
    return [list(s) for s in out]


def refine(view: AttackerView, names: Sequence[str], masks: dict, target: Tensor, seqs: list[list[int]],
           labels: list[int], lo: int, hi: int, pool: Sequence[int], rounds: int = 4) -> tuple[list[list[int]], float]:
    """Hill-climb each example's text region [lo, hi) on the exact gradient cosine."""
    target = target.float()
    grads = list(example_grads(view, names, masks, seqs, labels))

    def cos(v: Tensor) -> Tensor:
        return (v @ target) / (v.norm(dim=-1) * target.norm()).clamp_min(1e-30)

    best = float(cos(sum(grads)))
    for _ in range(rounds):
        improved = False
        for i, seq in enumerate(seqs):
            cands = _variants(seq, lo, hi, pool)
            if not cands:
                continue
            g = example_grads(view, names, masks, cands, [labels[i]] * len(cands))
            rest = sum(gr for j, gr in enumerate(grads) if j != i)
            scores = cos(rest + g)
            k = int(torch.argmax(scores))
            if float(scores[k]) > best + 1e-6:
                best, seqs[i], grads[i], improved = float(scores[k]), cands[k], g[k], True
        if not improved:
            break
    return seqs, best
