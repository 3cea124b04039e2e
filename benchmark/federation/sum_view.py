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

Where the view comes from. The probe's secure round runs on a transcript of its own (kept on the probe
case, never metered, never in the run's transcript). The view is a function of the server's messages:
``read_sum_view`` reads the server role's unmasked sum right after that round, the starts the run's
transcript tells and the server's reading of one masked probe upload. The live server's unmask is a
replay of that round's transcript because every input it got was the recorded message's copy
(``Channel.up`` hands on a copy of what it records) and its own asks follow from its state and those
inputs; ``replayed_sum_view`` is that replay into a server role brought to the same state (the run's
messages up to the probe, then any earlier probe rounds), and tests/test_threat_model.py checks that a
fresh role gets the very same view.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from benchmark.contract import (
    AttackerView,
    ClientInfo,
    LoRAFactors,
    ObservedModule,
    ServerRole,
    StartKnowledge,
    WirePayload,
)
from benchmark.federation.transcript import (
    Message,
    PublicFacts,
    Transcript,
    on_device,
    start_knowledge,
    wire_copy,
)

UPLOADS = ("upload", "probe")  # a round's protected updates: the run's, or a sum probe's own round


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


def replay_rounds(server: ServerRole, messages: Sequence[Message]) -> WirePayload | None:
    """Drive ``server`` through recorded rounds (setup excluded, broadcasts skipped: the server sends
    them, it does not read them) in the order the round driver calls it: negotiate, exchanges (its own
    asks, each checked against the recorded one; the recorded answers), uploads, exchanges, aggregate.
    Returns the last aggregate. A role whose asks differ from the record is out of step: ``ValueError``."""
    msgs = [m for m in messages if m.kind == "negotiation" or m.kind in UPLOADS]
    pos, message = 0, None

    def take(kinds: tuple[str, ...], direction: str) -> list[WirePayload]:
        nonlocal pos
        out = []
        while pos < len(msgs) and msgs[pos].kind in kinds and msgs[pos].direction == direction:
            out.append(wire_copy(msgs[pos].payload))
            pos += 1
        return out

    def exchanges(received: list[WirePayload]) -> None:
        nonlocal pos
        asks = server.exchange(received)
        while asks:
            received = []
            for cid in asks:  # each ask down, its answer (if any) right after it
                ask = msgs[pos] if pos < len(msgs) else None
                if ask is None or ask.kind != "negotiation" or ask.direction != "down" or ask.clients != (cid,):
                    raise ValueError(f"replay: the server asks client {cid}; the record has {ask}")
                pos += 1
                nxt = msgs[pos] if pos < len(msgs) else None
                if nxt is not None and nxt.kind == "negotiation" and nxt.direction == "up" and nxt.clients == ask.clients:
                    received.append(wire_copy(nxt.payload))
                    pos += 1
            asks = server.exchange(received)

    while pos < len(msgs):
        start = pos
        if server.negotiate(take(("negotiation",), "up")) is not None:
            take(("negotiation",), "down")
        exchanges([])
        uploads = take(UPLOADS, "up")
        exchanges(uploads)
        if pos == start:
            raise ValueError(f"replay: message {pos} ({msgs[pos].kind}, {msgs[pos].direction}) fits no step")
        message = server.aggregate(uploads)
    return message


def read_sum_view(server: ServerRole, run: Transcript, sum_round: Transcript, target: ClientInfo,
                  clients: Mapping[int, ClientInfo], rnd: int, public: PublicFacts, **hyper: Any) -> AttackerView | None:
    """The attacker's view of a sum probe, read off ``server`` right after it aggregated ``sum_round``:
    the sum it unmasked over the clients whose probe messages that round holds, their starts in round
    ``rnd`` as the run's transcript tells them, the server's reading of the first masked probe upload and
    a public model at ``target``'s start (the first sender's where the target sent nothing).
    ``clients``: the federation's public roster by id. None where no probe upload arrived."""
    sent = [m for m in sum_round.messages if m.kind == "probe" and m.direction == "up"]
    dense = server.unmasked_sum()
    if not sent or dense is None:
        return None
    who = [m.clients[0] for m in sent]
    starts = [start_knowledge(server, run, clients[cid], rnd) for cid in who]
    target_start = starts[who.index(target.client_id)] if target.client_id in who else starts[0]
    masked = server.observe(wire_copy(sent[0].payload))
    view = sum_view(masked, dense, starts, target_start, public.build_model, tokenizer=public.tokenizer,
                    task=public.task, template=public.template, prompt_tokens=public.prompt_tokens,
                    label_token_ids=public.label_token_ids, **hyper)
    return on_device(view, public.device)


def replayed_sum_view(server: ServerRole, run: Transcript, sum_round: Transcript, target: ClientInfo,
                      clients: Mapping[int, ClientInfo], rnd: int, public: PublicFacts, **hyper: Any
                      ) -> AttackerView | None:
    """``read_sum_view`` after replaying ``sum_round`` into ``server``, which must stand where the live
    server stood before that round (replayed the run's messages up to the probe and any earlier probe
    rounds): the view from the server's messages and public facts alone."""
    replay_rounds(server, sum_round.messages)
    return read_sum_view(server, run, sum_round, target, clients, rnd, public, **hyper)
