"""Gradient matching (TAG/LAMP-style): optimize a soft token sequence until the LoRA gradient it
causes matches the observed one.

Each unknown position holds logits over the vocabulary; its input embedding is the softmax mixture of
the embedding rows, so the whole pipeline is differentiable. The dummy batch follows the public format
(known template tokens stay fixed; the label is a soft unknown too), its LoRA gradient is recomputed at
the client's starting factors, and the distance to the observed update (cosine as in LAMP, or TAG's
L2 + L1) is minimized with Adam, over the visible coordinates only in adaptive mode. It needs double
backpropagation, so it is sized for tiny models on CPU; bigger models get an honest note.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from attacks.toolkit.decoding import first_layer_is_position_free, layer_checks, vocab_distances
from attacks.toolkit.labels import complete_labels
from attacks.toolkit.lorahooks import attached, flatten_grads, observed_target
from attacks.toolkit.probing import device_of, is_decoder, locate
from attacks.toolkit.refine import refine
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


@dataclass(frozen=True)
class GradMatchParams(AttackParams):
    """The matching loss, the optimizer's budget and the discrete refinement after it."""

    attack: ClassVar[str] = "grad_match"
    loss: str = field(default="cos", metadata={"help": "gradient distance: cos (LAMP's cosine) or l2l1 (TAG's "
                                                       "L2 + tag_l1 x L1 of normalized gradients)"})
    steps: int = field(default=200, metadata={"help": "Adam steps per restart (each a double backpropagation); "
                                                      ">= 1"})
    restarts: int = field(default=2, metadata={"help": "random restarts of the continuous phase; the best "
                                                       "is kept; >= 1"})
    lr: float = field(default=0.1, metadata={"help": "Adam's learning rate on the soft tokens and label; > 0"})
    max_tokens: int = field(default=32, metadata={"help": "not read by this version (unknown positions per "
                                                          "example come from the layer-1 rank, else 12, capped "
                                                          "at 64); kept so configs and cell keys stay valid; >= 1"})
    tag_l1: float = field(default=0.01, metadata={"help": "weight of the L1 term of the l2l1 loss; >= 0"})
    max_params: int = field(default=30_000_000, metadata={"help": "a model with more parameters is skipped "
                                                                  "(abstained) unless it sits on a GPU; >= 1"})
    vocab: str = field(default="bag", metadata={"help": "text-token candidates: bag (tokens nearest the layer-0 "
                                                        "span, LAMP's bag-of-words prior) or full (the whole "
                                                        "vocabulary)"})
    refine_rounds: int = field(default=4, metadata={"help": "discrete hill-climbing rounds after the continuous "
                                                            "phase (decoder classification; 0: none); >= 0"})
    seed: int = field(default=0, metadata={"help": "seed of the restarts' random soft tokens; >= 0"})
    patience: int = field(default=40, metadata={"help": "stop a restart once its decoded tokens and label held "
                                                        "for this many steps (0: never stop early); >= 0"})
    good_enough: float = field(default=1e-4, metadata={"help": "a restart ending below this distance makes "
                                                               "further restarts pointless; >= 0"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_choice("loss", ("cos", "l2l1"))
        self.require_choice("vocab", ("bag", "full"))
        self.require_at_least(1, "steps", "restarts", "max_tokens", "max_params")
        self.require_at_least(0, "tag_l1", "refine_rounds", "seed", "patience", "good_enough")
        self.require("lr", self.lr > 0, "> 0")


class GradMatch(Attack):
    name: ClassVar[str] = "grad_match"
    version: ClassVar[str] = "3"
    requires: ClassVar[frozenset[str]] = frozenset({"plaintext", "model"})
    target: ClassVar[str] = "probe"
    metrics: ClassVar[Mapping[str, bool]] = RECONSTRUCTION_METRICS
    modes_differ_only_on_hidden: ClassVar[bool] = True  # adaptive only drops hidden coordinates and unpermutes A
    control: ClassVar[Control] = Control(
        scenario="tiny",
        overrides=gradient_probe([1], model={"name": "tiny_llama4"}),
        metric="rouge1", floor=0.9,
        why="TAG and LAMP recover single examples from a small model's gradient by matching it with soft tokens; "
            "double backpropagation keeps it to tiny models on CPU: the tiny scenario on tiny_llama4 (on the "
            "2-layer tiny_llama the label-only gradient of the last layer flows from one position and matching "
            "reaches 0.57), a round-1 gradient at factors the server drew, batch 1",
        tiny=gradient_probe([1], batches=1, model={"name": "tiny_llama4"}),
        tiny_floor=0.9,
    )
    Params = GradMatchParams
    params: GradMatchParams

    def unusable(self, view: AttackerView) -> str:
        """Besides plaintext and a model: a single-step gradient, and the start to recompute it at."""
        why = super().unusable(view)
        if why:
            return why
        if not (view.kind == "grad" or (view.kind == "sgd" and view.local_steps == 1)):
            return f"{view.kind} update over {view.local_steps} steps: only a single-step gradient can be matched"
        if view.prev is None:
            return (f"gradients are recomputed at the client's start, which the server does not know "
                    f"(start: {view.start_known})")
        return ""

    def _reconstruct(self, view: AttackerView) -> Reconstruction:
        p, model = self.params, view.model
        n_params = sum(t.numel() for t in model.parameters())
        if n_params > p.max_params and device_of(model).type == "cpu":
            return Reconstruction.abstain(f"model has {n_params / 1e6:.0f}M parameters: gradient matching needs a GPU at this size")
        adaptive = p.mode == "adaptive"
        names = [n for n in locate(model, list(view.modules)) if n in view.prev]
        target, masks = observed_target(view, names, adaptive)
        if target.numel() == 0 or float(target.norm()) == 0.0:
            return Reconstruction.abstain("observed update is zero on every usable coordinate")
        checks = layer_checks(view, adaptive, 1e-7, exact=False)
        layout = _Layout.build(view, _length(view, checks), self._vocab(view, checks))
        with _eager(model), attached(model, {n: view.prev[n] for n in names}) as leaves:
            best, best_loss = None, float("inf")
            steps_run = 0
            for restart in range(p.restarts):
                z, loss, ran = self._run(view, layout, leaves, names, masks, target.float(), restart)
                steps_run += ran
                if loss < best_loss:
                    best, best_loss = z, loss
                if best_loss < p.good_enough:
                    break
        ids = layout.tokens(*best)
        extra = {"match_loss": best_loss, "unknown_tokens": float(layout.T), "vocab": float(len(layout.vocab)),
                 "steps_run": float(steps_run)}
        if layout.decoder and view.task == "classification" and p.refine_rounds > 0:
            ids, cos = self._discrete(view, layout, names, masks, target, [s[:-1] for s in ids])
            extra["match_cos"] = cos
        return Reconstruction(texts=[decode(s, view.tokenizer) for s in ids], token_ids=ids, extra=extra)

    def _discrete(self, view: AttackerView, layout: _Layout, names: list[str], masks: dict, target: Tensor,
                  prompts: list[list[int]]) -> tuple[list[list[int]], float]:
        """Pick each label by its exact gradient, then hill-climb the text tokens (swaps, moves and,
        over a small candidate vocabulary, substitutions) on the exact gradient cosine."""
        adaptive = self.params.mode == "adaptive"
        labels = [s[-1] for s in complete_labels(view, prompts, adaptive)]
        lo = len(layout.tpl.start)
        pool = layout.vocab.tolist() if len(layout.vocab) <= 64 else []
        seqs, cos = refine(view, names, masks, target, prompts, labels, lo, lo + layout.T, pool, self.params.refine_rounds)
        return [s + [y] for s, y in zip(seqs, labels)], cos

    def _vocab(self, view: AttackerView, checks: list) -> Tensor:
        """Candidate tokens for the text positions: the tokens nearest the first layer's span when it
        is usable (LAMP's bag-of-words prior, here from the span instead of embedding gradients),
        else the whole vocabulary."""
        V = view.model.get_input_embeddings().weight.shape[0]
        first = checks[0] if checks and checks[0].layer == 0 else None
        if self.params.vocab != "bag" or first is None or first.vacuous:
            return torch.arange(V)
        if not first_layer_is_position_free(view.model, first):
            return torch.arange(V)
        d = vocab_distances(view.model, first)
        k = min(V, max(32, 2 * first.rank + 8))
        return torch.topk(d, k, largest=False).indices

    def _run(self, view: AttackerView, layout: _Layout, leaves: dict, names: list[str], masks: dict,
             target: Tensor, restart: int) -> tuple[tuple[Tensor, Tensor], float, int]:
        """One restart: (soft tokens, soft label), the final distance, and the steps it took. Only the
        argmax of the soft tokens and label leaves this phase (``_Layout.tokens``; the discrete
        refinement starts from it), so a restart stops once they have not changed for ``patience``
        steps: each step is a double backpropagation, and the remaining ones only sharpen the
        distribution around the same tokens."""
        p = self.params
        gen = torch.Generator().manual_seed(p.seed * 1000 + restart)
        dev = device_of(view.model)
        z = torch.randn((layout.B, layout.T, len(layout.vocab)), generator=gen).to(dev).requires_grad_(True)
        lab = torch.zeros((layout.B, layout.n_label)).to(dev).requires_grad_(True)
        opt = torch.optim.Adam([z, lab], lr=p.lr)
        params = [t for n in names for t in leaves[n]]
        tnorm = target.to(dev) / target.norm()
        loss_val, decoded, since, ran = float("inf"), None, 0, 0
        for _ in range(p.steps):
            loss = layout.loss(view.model, z, lab)
            g = torch.autograd.grad(loss, params, create_graph=True)
            flat = flatten_grads({n: (g[2 * i], g[2 * i + 1]) for i, n in enumerate(names)}, masks)
            if p.loss == "cos":
                dist = 1 - flat @ tnorm / flat.norm().clamp_min(1e-12)
            else:
                diff = flat / flat.norm().clamp_min(1e-12) - tnorm
                dist = (diff * diff).sum() + p.tag_l1 * diff.abs().sum()
            opt.zero_grad()
            z.grad, lab.grad = torch.autograd.grad(dist, [z, lab])
            opt.step()
            loss_val, ran = float(dist.detach()), ran + 1
            now = torch.cat([z.detach().argmax(-1).flatten(), lab.detach().argmax(-1).flatten()])
            since = since + 1 if decoded is not None and torch.equal(now, decoded) else 0
            decoded = now
            if p.patience and since >= p.patience:
                break
        return (z.detach(), lab.detach()), loss_val, ran


def _length(view: AttackerView, checks: list) -> int | None:
    """Tokens per example from the second layer's rank (one per visible position), if exact."""
    if len(checks) < 2 or checks[1].saturated or checks[1].vacuous:
        return None
    return checks[1].rank // max(1, view.batch_size or 1) + 1


@dataclass
class _Layout:
    """Where the unknowns sit: per example, the known start tokens, T soft text tokens over ``vocab``,
    the known suffix, and a soft label (a token for decoders, a class for encoders)."""

    tpl: TemplateIds
    B: int
    T: int
    vocab: Tensor
    decoder: bool
    n_label: int
    embed: Any

    @staticmethod
    def build(view: AttackerView, length: int | None, vocab: Tensor) -> _Layout:
        model = view.model
        decoder = is_decoder(model)
        tpl = harness_ids(view.tokenizer, view.template, decoder)
        fixed = len(tpl.start) + len(tpl.suffix) + 1 if decoder else len(tpl.lead) + len(tpl.trail)
        T = (length - fixed) if length else 12
        emb = model.get_input_embeddings()
        n_label = emb.weight.shape[0] if decoder else int(getattr(model.config, "num_labels", 2))
        return _Layout(tpl, max(1, view.batch_size or 1), max(1, min(T, 64)), vocab, decoder, n_label, emb)

    def _embeds(self, z: Tensor, lab: Tensor) -> Tensor:
        W = self.embed.weight
        parts = []
        if self.tpl.start:
            parts.append(W[torch.tensor(self.tpl.start, device=W.device)].expand(self.B, -1, -1))
        parts.append(F.softmax(z, -1) @ W[self.vocab.to(W.device)])
        tail = list(self.tpl.suffix) if self.decoder else list(self.tpl.trail)
        if tail:
            parts.append(W[torch.tensor(tail, device=W.device)].expand(self.B, -1, -1))
        if self.decoder:
            parts.append((F.softmax(lab, -1) @ W).unsqueeze(1))
        return torch.cat(parts, 1)

    def loss(self, model, z: Tensor, lab: Tensor) -> Tensor:
        """The client's loss on the soft batch with the soft label as target: the label token's
        cross-entropy for decoders, the classifier head's for encoders."""
        embeds = self._embeds(z, lab)
        target = F.softmax(lab, -1)
        if self.decoder:
            out = model(inputs_embeds=embeds, logits_to_keep=2).logits[:, 0].float()
        else:
            out = model(inputs_embeds=embeds).logits.float()
        return -(target * F.log_softmax(out, -1)).sum(-1).mean()

    def tokens(self, z: Tensor, lab: Tensor) -> list[list[int]]:
        text = self.vocab[z.argmax(-1).cpu()].tolist()
        label = lab.argmax(-1).tolist()
        out = []
        for row, y in zip(text, label):
            if self.decoder:
                out.append(list(self.tpl.start) + row + list(self.tpl.suffix) + [y])
            else:
                out.append(list(self.tpl.lead) + row + list(self.tpl.trail))
        return out


class _eager:
    """Switch the model to eager attention for double backpropagation, and back afterwards."""

    def __init__(self, model) -> None:
        self.model = model
        self.old = getattr(getattr(model, "config", None), "_attn_implementation", None)

    def __enter__(self) -> None:
        if self.old not in (None, "eager"):
            _set_attn(self.model, "eager")

    def __exit__(self, *exc: object) -> None:
        if self.old not in (None, "eager"):
            _set_attn(self.model, self.old)


def _set_attn(model, impl: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:
        model.config._attn_implementation = impl
