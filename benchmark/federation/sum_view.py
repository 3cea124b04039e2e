"""The attacker's view of a round's sum, for a defense whose server sees nothing else (SecAgg+).

What the server holds: per module the dense weighted mean ``W = sum_i w_i D_i`` of the participants'
uploads, which it unmasked itself, and what its own messages tell it of each participant's start
(``StartKnowledge``). The weights ``w_i`` stay secret (the sample counts are summed under the masks).
An attack probe's ``D_i`` is the client's dense change from its start: ``s_i (dB_i A0_i + B0_i dA_i)``
for a gradient, the same plus ``s_i dB_i dA_i`` after SGD steps (``defenses.secagg.dense_vectors``).

How the span attacks read it, written as LoRA factors so that they run unchanged:

- Every start known exactly with ``B0 = 0`` (round 1, peft's init: the setting the span attacks are
  calibrated on). Then ``W = sum_i w_i s_i dB_i A0_i``: its rows lie in the row space of the starting
  A's. With ``S`` the distinct starting A's stacked (clients of one rank drawn by the server share
  theirs), ``W = C S`` and the server solves for ``C`` exactly (``S`` has full row rank while the
  stacked ranks stay below the input width). The view is a LoRA of rank ``rows(S)``: start ``(S, 0)``,
  observed ``B = C`` (A unchanged, or a zero gradient), so the B path tests ``S x`` against the rows of
  ``C``. One block per distinct start: where the participants share one A0 every member token passes;
  where their ranks differ, the blocks of ``C`` carry different clients' tokens and ``S x`` must lie in
  all blocks at once, which a token of one client's batch does not: such a sum reads poorly with one
  span (a server could split the blocks and attack each; that attack is not written).
- Otherwise (later rounds, B0 != 0, or a start the server knows only in part): ``W`` itself as the
  update of a rank-m LoRA with ``B = I``: the A path tests token inputs against the rows of ``W``,
  which span the batches' inputs mixed with the starting A's rows (an approximate span: the note says
  so).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor

from benchmark.contract import AttackerView, LoRAFactors, ObservedModule, StartKnowledge


def distinct(tensors: Sequence[Tensor]) -> list[Tensor]:
    """``tensors`` without repeats (exact equality), in order."""
    out: list[Tensor] = []
    for t in tensors:
        if not any(t.shape == u.shape and torch.equal(t, u) for u in out):
            out.append(t)
    return out


def zero_b_starts(starts: Sequence[StartKnowledge]) -> bool:
    """Every start known exactly, with B = 0 in every module (peft's round-1 init)."""
    return all(k.known == "exact" and k.factors and all(float(f.B.abs().max()) == 0.0 for f in k.factors.values())
               for k in starts)


def sum_modules(dense: Mapping[str, Tensor], starts: Sequence[StartKnowledge], kind: str
                ) -> tuple[dict[str, ObservedModule], dict[str, LoRAFactors], str, str]:
    """The sum as LoRA-form observed modules and starts, the start's status and a note (see above)."""
    modules: dict[str, ObservedModule] = {}
    prev: dict[str, LoRAFactors] = {}
    if zero_b_starts(starts):
        blocks = 0
        for name, W in dense.items():
            W = W.detach().double().cpu()
            stacked = torch.cat(distinct([k.factors[name].A.detach().double().cpu() for k in starts]))
            blocks = max(blocks, len(distinct([k.factors[name].A for k in starts])))
            C = torch.linalg.lstsq(stacked.T, W.T).solution.T  # W = C S, exactly while S has full row rank
            modules[name] = ObservedModule(torch.zeros_like(stacked) if kind == "grad" else stacked, C, 1.0)
            prev[name] = LoRAFactors(stacked, torch.zeros_like(C), 1.0)
        note = (f"the round's sum over the participants' starting A's ({blocks} distinct, stacked): the dL/dB path "
                f"through the known A0" + ("; distinct starts mix per-client blocks in one span" if blocks > 1 else ""))
        return modules, prev, "exact", note
    for name, W in dense.items():
        W = W.detach().double().cpu()
        eye = torch.eye(W.shape[0], dtype=W.dtype)
        modules[name] = ObservedModule(W, eye, 1.0)
        prev[name] = LoRAFactors(torch.zeros_like(W), eye, 1.0)
    note = "the round's dense sum read as an A update (its rows mix the batches' inputs with the starts' A rows)"
    return modules, prev, "exact" if all(k.known == "exact" for k in starts) else "estimate", note


def sum_view(masked: AttackerView, dense: Mapping[str, Tensor], starts: Sequence[StartKnowledge],
             model_start: StartKnowledge, build_model, **hyper) -> AttackerView:
    """The view of the round's sum: ``masked`` (the server's reading of one masked upload: what it is,
    its bytes) with the sum's modules, the starts in the same form and a public model at the probed
    client's start (``model_start``); ``hyper``: lr, local_steps, batch_size (every participant's)."""
    modules, prev, known, note = sum_modules(dense, starts, masked.kind)
    deltas = {n: f.delta() for n, f in model_start.factors.items()} if model_start.factors else {}
    return replace(masked, modules=modules, prev=prev, start_known=known, start_space=None,
                   model=build_model(deltas), note=f"{note}; {len(starts)} participants", summed=len(starts),
                   **hyper)
