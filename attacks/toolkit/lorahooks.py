"""Recomputing a client's LoRA gradients on the public model, for attacks that compare candidates
with the observed update (label completion, gradient matching).

The public model already has the client's starting delta s*B0@A0 merged, so its forward is the client's
forward. Each adapted module gets a hook adding s*(x A^T) B^T - s*(x A0^T) B0^T with leaf factors A, B
starting at A0, B0: at the start the output value is unchanged while autograd sees exactly the LoRA
gradient there, and moving the leaves moves the output as the client's adapter would. No peft wrapper
and no model copy are needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks.toolkit.probing import FromLayer, device_of, last_logits, locate
from benchmark.contract import AttackerView, LoRAFactors, ObservedModule


@contextmanager
def attached(model: nn.Module, factors: Mapping[str, LoRAFactors]) -> Iterator[dict[str, tuple[Tensor, Tensor]]]:
    """Attach differentiable LoRA factors (copies of ``factors``) to the named modules of ``model``."""
    found = locate(model, list(factors))
    dev = device_of(model)
    leaves: dict[str, tuple[Tensor, Tensor]] = {}
    handles = []
    for name, am in found.items():
        f = factors[name]
        A0 = f.A.detach().to(dev, torch.float32)
        B0 = f.B.detach().to(dev, torch.float32)
        A = A0.clone().requires_grad_(True)
        B = B0.clone().requires_grad_(True)
        leaves[name] = (A, B)

        def hook(_m: nn.Module, args: tuple, out: Tensor, A: Tensor = A, B: Tensor = B, A0: Tensor = A0,
                 B0: Tensor = B0, s: float = f.scale) -> Tensor:
            x = args[0]  # t0 keeps its gradient in x: it cancels the merged delta's second x-path
            return out + (s * (x @ A.T) @ B.T - s * (x @ A0.T) @ B0.T)

        handles.append(am.module.register_forward_hook(hook))
    try:
        yield leaves
    finally:
        for h in handles:
            h.remove()


def observed_target(view: AttackerView, names: Sequence[str], adaptive: bool) -> tuple[Tensor, dict[str, tuple[Tensor | None, Tensor | None]]]:
    """The observed update as a gradient-like flat vector over usable coordinates, and per module the
    boolean masks (A, B) selecting those coordinates (None: factor unused).

    A gradient is used as is; an SGD delta is turned into prev - observed (a positive multiple of the
    summed gradients). Naive mode uses every coordinate (hidden ones are zeros); adaptive mode only
    visible ones, with A's columns mapped back to input features when their order is known.
    """
    parts: list[Tensor] = []
    masks: dict[str, tuple[Tensor | None, Tensor | None]] = {}
    for name in names:
        om: ObservedModule = view.modules[name]
        prev = view.prev.get(name) if view.prev else None
        pair: list[Tensor | None] = []
        for factor in ("A", "B"):
            M = getattr(om, factor)
            hidden = getattr(om, f"{factor}_hidden")
            if M is None or (adaptive and hidden is not None and bool(hidden.all())):
                pair.append(None)
                continue
            M = M.detach().double().cpu()
            if factor == "A" and adaptive and om.column_order is not None:
                inv = torch.empty(M.shape[1], dtype=torch.long)
                inv[torch.tensor(om.column_order)] = torch.arange(M.shape[1])
                M = M[:, inv]
                hidden = hidden[:, inv] if hidden is not None else None
            if view.kind != "grad":
                if prev is None:
                    pair.append(None)
                    continue
                M = getattr(prev, factor).detach().double().cpu() - M
            keep = torch.ones_like(M, dtype=torch.bool)
            if adaptive and hidden is not None:
                keep = ~hidden.bool().cpu()
            parts.append(M[keep])
            pair.append(keep)
        masks[name] = (pair[0], pair[1])
    flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    return flat, masks


def flatten_grads(grads: Mapping[str, tuple[Tensor, Tensor]], masks: Mapping[str, tuple[Tensor | None, Tensor | None]]) -> Tensor:
    """Flatten recomputed (dA, dB) per module over the same coordinates as ``observed_target``."""
    parts = []
    for name, (ka, kb) in masks.items():
        gA, gB = grads[name]
        if ka is not None:
            parts.append(_select(gA, ka))
        if kb is not None:
            parts.append(_select(gB, kb))
    return torch.cat(parts) if parts else torch.zeros(0)


def _select(g: Tensor, keep: Tensor) -> Tensor:
    """``g[keep]`` (row-major order); a full mask is a reshape, not a masked gather."""
    return g.reshape(-1) if bool(keep.all()) else g[keep.to(g.device)]


def unflatten(flat: Tensor, masks: Mapping[str, tuple[Tensor | None, Tensor | None]],
              shapes: Mapping[str, tuple[torch.Size, torch.Size]]) -> dict[str, tuple[Tensor, Tensor]]:
    """Inverse of ``flatten_grads``: per module (A, B) tensors, zero outside the masks."""
    out: dict[str, tuple[Tensor, Tensor]] = {}
    pos = 0
    for name, (ka, kb) in masks.items():
        pair = []
        for keep, shape in zip((ka, kb), shapes[name]):
            t = torch.zeros(shape, dtype=flat.dtype)
            if keep is not None:
                n = int(keep.sum())
                t[keep] = flat[pos : pos + n]
                pos += n
            pair.append(t)
        out[name] = (pair[0], pair[1])
    return out


def per_example_grads(model: nn.Module, factors: Mapping[str, LoRAFactors], input_ids: Tensor,
                      losses: Callable[[Tensor], Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-example LoRA gradients (K, r, n) and (K, m, r) at the starting factors, from ONE batched
    forward/backward: each module's input x and output gradient g are captured, and
    dA_k = s (g_k B)^T x_k, dB_k = s g_k^T (x_k A^T). ``losses`` maps logits to per-example losses."""
    found = locate(model, list(factors))
    xs: dict[str, Tensor] = {}
    probes: dict[str, Tensor] = {}

    def make(name: str) -> Callable:
        def hook(_m: nn.Module, args: tuple, out: Tensor) -> Tensor:
            xs[name] = args[0].detach()
            probes[name] = torch.zeros_like(out, requires_grad=True)  # d loss / d probe = d loss / d out
            return out + probes[name]

        return hook

    handles = [am.module.register_forward_hook(make(n)) for n, am in found.items()]
    try:
        with torch.enable_grad():
            logits = model(input_ids=input_ids.to(device_of(model))).logits
            names = [n for n in found if n in probes]
            gs = torch.autograd.grad(losses(logits).sum(), [probes[n] for n in names], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    res: dict[str, tuple[Tensor, Tensor]] = {}
    for name, g in zip(names, gs):
        if g is None:
            g = torch.zeros_like(probes[name])
        f = factors[name]
        A, B = f.A.to(g), f.B.to(g)
        x = xs[name].to(g)
        dA = f.scale * torch.einsum("klr,kln->krn", g @ B, x)
        dB = f.scale * torch.einsum("klm,klr->kmr", g, x @ A.T)
        res[name] = (dA, dB)
    return res


def label_gradients(model: nn.Module, factors: Mapping[str, LoRAFactors], ids: Sequence[int],
                    labels: Sequence[int], runner: FromLayer | None = None,
                    chunk: int = 64) -> list[dict[str, tuple[Tensor, Tensor]]]:
    """``label_gradient_batches`` as one dict of (dA, dB) per label."""
    per = label_gradient_batches(model, factors, ids, labels, runner, chunk)
    return [{n: (dA[k], dB[k]) for n, (dA, dB) in per.items()} for k in range(len(labels))]


def label_gradient_batches(model: nn.Module, factors: Mapping[str, LoRAFactors], ids: Sequence[int],
                           labels: Sequence[int], runner: FromLayer | None = None,
                           chunk: int = 64) -> dict[str, tuple[Tensor, Tensor]]:
    """Per module, the LoRA gradients (K, r, n) and (K, m, r) of the loss -log p(label | ids) for each
    of the K candidate labels, from ONE forward pass: the label only changes the loss target, so each
    candidate costs a backward pass down to the hooked modules alone (cheap when they sit in the last layers). ``runner`` (starting at or below
    the first hooked layer) skips the blocks below it, whose output it keeps per sequence, so a
    sequence scored again costs the hooked blocks alone.

    The label enters only at the head: for the head's input x and weight W, d(-log p_l)/dx =
    p W - W_l. Where the head is a plain linear map (checked against this pass's logits), each label's
    cotangent at x is formed directly, skipping the backward through the vocabulary-sized head, and
    ``chunk`` labels go back through the hooked blocks as one batched backward. Otherwise (or where
    the batched backward is not supported) each label gets its own backward from the log-probabilities."""
    found = locate(model, list(factors))
    xs: dict[str, Tensor] = {}
    probes: dict[str, Tensor] = {}

    def make(name: str) -> Callable:
        def hook(_m: nn.Module, args: tuple, out: Tensor) -> Tensor:
            xs[name] = args[0].detach()
            probes[name] = torch.zeros_like(out, requires_grad=True)
            return out + probes[name]

        return hook

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_in: list[Tensor] = []
    handles = [am.module.register_forward_hook(make(n)) for n, am in found.items()]
    if isinstance(head, nn.Linear):
        handles.append(head.register_forward_pre_hook(lambda _m, args: head_in.append(args[0])))
    try:
        with torch.enable_grad():
            seq = torch.tensor([list(ids)])
            logits = (runner.last_logits(seq) if runner is not None else last_logits(model, seq))[0].float()
            names = [n for n in found if n in probes]
            targets = [probes[n] for n in names]
            grads = _through_head(head, head_in, logits, labels, targets, chunk)
            if grads is None:
                logp = F.log_softmax(logits, -1)
                grads = [torch.autograd.grad(-logp[label], targets, retain_graph=j < len(labels) - 1, allow_unused=True)
                         for j, label in enumerate(labels)]
    finally:
        for h in handles:
            h.remove()
    per: dict[str, tuple[Tensor, Tensor]] = {}
    for i, name in enumerate(names):  # all labels at once: G (K, L, m), x (L, n)
        G = torch.stack([torch.zeros_like(probes[name][0]) if gs[i] is None else gs[i][0] for gs in grads])
        f = factors[name]
        A, B, x = f.A.to(G), f.B.to(G), xs[name][0].to(G)
        if bool(B.any()):
            dA = f.scale * torch.einsum("klr,ln->krn", G @ B, x)
        else:  # round 1's B = 0: dL/dA is exactly zero
            dA = G.new_zeros((len(grads),) + tuple(A.shape))
        per[name] = (dA, f.scale * torch.einsum("klm,lr->kmr", G, x @ A.T))
    return per


def flatten_batches(batches: Mapping[str, tuple[Tensor, Tensor]], masks: Mapping[str, tuple[Tensor | None, Tensor | None]]) -> Tensor:
    """``flatten_grads`` of every example at once: (K, n_coords) from per-module (K, ...) gradients,
    in one copy (no per-example vectors to stack)."""
    parts = []
    for name, (ka, kb) in masks.items():
        for g, keep in zip(batches[name], (ka, kb)):
            if keep is not None:
                flat = g.reshape(g.shape[0], -1)
                parts.append(flat if bool(keep.all()) else flat[:, keep.to(g.device).reshape(-1)])
    return torch.cat(parts, 1) if parts else torch.zeros(0, 0)


def _through_head(head: nn.Module | None, head_in: list[Tensor], logits: Tensor, labels: Sequence[int],
                  targets: list[Tensor], chunk: int) -> list[tuple[Tensor | None, ...]] | None:
    """Each label's gradient of -log p(label) at ``targets``, from cotangents formed at the head's
    input and one batched backward per ``chunk`` labels; None where that does not apply."""
    if not isinstance(head, nn.Linear) or len(head_in) != 1 or not head_in[0].requires_grad:
        return None
    x = head_in[0]
    W = head.weight.detach()
    with torch.no_grad():
        again = F.linear(x[0, -1], W, None if head.bias is None else head.bias.detach()).float()
        if not torch.allclose(again, logits, rtol=1e-5, atol=1e-5 * float(logits.abs().max().clamp_min(1.0))):
            return None  # something (soft-capping, scaling) stands between the head and the logits
        base = torch.softmax(logits, -1) @ W.float()
    out: list[tuple[Tensor | None, ...]] = []
    for start in range(0, len(labels), chunk):
        lab = torch.tensor(list(labels[start : start + chunk]), device=W.device)
        cot = x.new_zeros((len(lab),) + tuple(x.shape))
        cot[:, 0, -1] = (base - W[lab].float()).to(x.dtype)
        try:
            gs = torch.autograd.grad(x, targets, grad_outputs=cot, retain_graph=True, allow_unused=True,
                                     is_grads_batched=True)
        except RuntimeError:  # an operation without a batching rule: one backward per label
            return None
        out += [tuple(None if g is None else g[k] for g in gs) for k in range(len(lab))]
    return out
