"""Membership inference against the client model the server can rebuild from a round's upload.

The server holds the public model (base + previous global delta, i.e. the client's starting point) and
sees the client's trained factors, minus whatever the defense hides. It rebuilds the client model by
adding the visible update, then scores each candidate text: LOSS (mean token log-likelihood), zlib
(log-likelihood over compressed length), Min-K% (mean of the lowest k% token log-probabilities), and
reference difference (likelihood gain from the client's update over the starting model, the natural
reference in federated learning), all four from the same two batched forward passes. Higher scores
mean "more likely a member". A decoder classifier trains only the label token after the prompt, so
for classification the per-token log-probabilities are replaced by the log-probability of the
candidate's own label there (a classification record is a text with its label; Yeom et al.'s LOSS is
the loss on that pair), or by the model's confidence in its top prediction when candidates come
unlabelled: a held-out text the model classifies confidently but wrongly looks like a member by
confidence, not by its label's loss. The model is read where it was trained: a prompt longer
than the task format keeps (``view.prompt_tokens``, public) is cut there first, since training put a
long member's label after its cut prompt; read after the whole text, half of the ``mia_overfit``
members (53% of its tweets run past 39 tokens) looked like never-trained texts.

The primary score (``score``, reported as ``mia_auc``) is fixed before any run; the default ``auto``
fixes it by a rule on the view, never by which score did best. A reference score removes each
candidate's own difficulty only when the reference models the task without the candidate
(difficulty calibration: Watson et al. 2022; Carlini et al. 2022 use reference models trained on the
same distribution). The server's reference is the public model, the client's start. Once the
federation has trained (the start carries a non-zero global delta, a fact of the server's own
broadcast) that start is a classifier of the same task without this round's update: the natural
reference, so ``auto`` means ``ref``. Before any training (round 1, or no start known) the public
model is the bare base model, which was never taught the task's label format: its confidence at the
label position says nothing about how hard a tweet is for a classifier, and subtracting it only adds
noise (``mia_overfit``, round 1, seed 0: ``ref`` 0.33 against LOSS 0.73 in the same row; 0.52 against
0.74 in an earlier setting), so ``auto`` means ``loss``, the score of Yeom et al. 2018. The row records the score used as
``mia_primary`` (and what the scores read as ``mia_reads``: tokens, label or top), and the note says why.

Naive mode applies the observed factors as shown (hidden entries as zeros); adaptive mode fills hidden
entries with the starting factors and restores the column order when the defense leaks it, so that
only the genuinely hidden part of the update is missing.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks.toolkit.probing import device_of, is_decoder, locate
from benchmark.contract import (
    MEMBERSHIP_METRICS,
    Attack,
    AttackerView,
    AttackParams,
    Control,
    ObservedModule,
    Reconstruction,
)

SCORES = ("loss", "zlib", "mink", "ref")
AUTO = "auto"


@dataclass(frozen=True)
class MIAParams(AttackParams):
    """The primary score, chosen before any run (never the best in hindsight), and how tokens are read."""

    attack: ClassVar[str] = "mia"
    score: str = field(default=AUTO, metadata={"help": "the primary score, reported as mia_auc (every other "
                                                       "score is reported beside it from the same passes); "
                                                       "one of loss, zlib, mink, ref, or auto: ref when the "
                                                       "public model (the client's start) carries a trained "
                                                       "global delta, else loss"})
    mink_k: float = field(default=0.2, metadata={"help": "Min-K%: the fraction of lowest token log-probabilities "
                                                         "averaged; in (0, 1]"})
    tokens: str = field(default="auto", metadata={"help": "all: every token's log-probability; label: the "
                                                          "log-probability of the candidate's label after the prompt "
                                                          "(what a classifier's label-only loss trains; the top "
                                                          "prediction's for unlabelled candidates); auto: label for "
                                                          "classification, else all"})
    max_length: int = field(default=128, metadata={"help": "candidates are truncated to this many tokens, and to "
                                                           "the prompt tokens training keeps where the view "
                                                           "says; >= 1"})
    batch_size: int = field(default=32, metadata={"help": "candidates per forward pass (scores do not depend on "
                                                          "it); >= 1"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_choice("tokens", ("auto", "all", "label"))
        self.require_choice("score", (*SCORES, AUTO))
        self.require_fraction("mink_k")
        self.require_at_least(1, "max_length", "batch_size")


class MembershipInference(Attack):
    name: ClassVar[str] = "mia"
    version: ClassVar[str] = "6"  # 5: prompts cut where training cut them; 6: the candidate's own label scored
    modes_differ_only_on_hidden: ClassVar[bool] = True  # adaptive only fills hidden entries and unpermutes A
    requires: ClassVar[frozenset[str]] = frozenset({"model", "candidates"})
    target: ClassVar[str] = "round"
    metrics: ClassVar[Mapping[str, bool]] = MEMBERSHIP_METRICS
    control: ClassVar[Control] = Control(
        scenario="mia_overfit",
        overrides={},
        metric="mia_auc", floor=0.75,
        why="The LOSS score (Yeom et al. 2018: the loss of each (text, label) record), primary under score=auto in "
            "a round-1 probe, separates the members of a model that overfits: mia_overfit trains the target alone, "
            "30 tweets for 20 epochs (training loss near zero), and scores them against 30 of its held-out tweets. "
            "One run's AUC moves by about +-0.08 with the training's randomness (60 candidates), so the floor is "
            "met in expectation, not with margin. Test scale: tiny_llama on 32 synthetic sentences for about 19 "
            "epochs, 16 + 16 candidates (synthetic labels follow their words, so the model also generalizes: the "
            "gap is smaller)",
        tiny={"rounds": 1, "n_clients": 2, "clients_per_round": 1, "partition": {"kind": "iid"},
              "data": {"max_examples": 96}, "train": {"local_steps": 150}, "probe": {"members": 16}},
        tiny_floor=0.7,
        params={"batch_size": 8},
    )
    Params = MIAParams
    params: MIAParams

    def unusable(self, view: AttackerView) -> str:
        """One reason for any of candidates, model or tokenizer missing; and a gradient is no round update."""
        if not view.candidates or view.model is None or view.tokenizer is None:
            return "needs candidates, the public model and its tokenizer"
        if view.kind == "grad":
            return "a gradient is not a round update; membership needs the trained factors"
        return ""

    def _reconstruct(self, view: AttackerView) -> Reconstruction:
        """Two batched passes over the candidates (client model, then the public starting model);
        LOSS, zlib and Min-K% come from the first, the reference score from both."""
        cands = list(view.candidates or [])
        p = self.params
        deltas = visible_deltas(view, p.mode == "adaptive")
        notes = [] if deltas else ["no visible update: scoring the public (starting) model only"]
        with applied(view.model, deltas):
            target = self._token_logprobs(view, cands)
        ref = self._token_logprobs(view, cands) if deltas else target
        by_score = {s: [self._score(s, lp, text, r) for lp, text, r in zip(target, cands, ref)] for s in SCORES}
        primary, why = primary_score(p.score, view)
        notes.append(f"primary score: {primary} ({why})")
        extra = {"modules_applied": float(len(deltas)), "mia_primary": primary, "mia_reads": self._reads(view)}
        return Reconstruction(membership_scores=by_score[primary], membership_scores_by=by_score, extra=extra,
                              note="; ".join(notes))

    def _reads(self, view: AttackerView) -> str:
        """What each score is made of (a row column): every token, the candidate's own label, or the top
        prediction (unlabelled candidates)."""
        if not self._label_only(view) and is_decoder(view.model):
            return "tokens"
        return "label" if view.candidate_labels is not None else "top"

    def _label_only(self, view: AttackerView) -> bool:
        return _label_only_for(self.params.tokens, view.task)

    def _score(self, score: str, lp: Tensor, text: str, ref: Tensor) -> float:
        """Higher = more likely a member. With label-only tokens ``lp`` holds one value, so Min-K%
        equals LOSS there."""
        if lp.numel() == 0:
            return float("-inf")
        if score == "loss":
            return float(lp.mean())
        if score == "zlib":
            return float(lp.mean()) / max(1, len(zlib.compress(text.encode("utf-8"))))
        if score == "mink":
            k = max(1, int(round(self.params.mink_k * lp.numel())))
            return float(torch.sort(lp).values[:k].mean())
        return float(lp.mean() - ref.mean()) if ref.numel() else float(lp.mean())

    @torch.no_grad()
    def _token_logprobs(self, view: AttackerView, texts: Sequence[str]) -> list[Tensor]:
        """Per text, the log-probability of each token given its prefix (decoders), or of the
        predicted class (encoders, whose only output is a classification). Texts are batched in
        length order so that batches carry little padding; results come back in input order."""
        model, tok, p = view.model, view.tokenizer, self.params
        decoder = is_decoder(model)
        label_only = self._label_only(view)
        keeps = "logits_to_keep" in inspect.signature(model.forward).parameters
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[Tensor] = [torch.empty(0)] * len(texts)
        for start in range(0, len(order), p.batch_size):
            idx = order[start : start + p.batch_size]
            chunk = [texts[i] for i in idx]
            enc = tok(chunk, add_special_tokens=not decoder, padding=True, truncation=True,
                      max_length=min(p.max_length, view.prompt_tokens or p.max_length), return_tensors="pt")
            enc = {k: v.to(device_of(model)) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            last = enc["attention_mask"].sum(1) - 1
            if decoder and label_only and keeps:  # project only each prompt's last position onto the vocabulary
                logits = model(**enc, logits_to_keep=last.unsqueeze(1)).logits.float()
                last = torch.zeros_like(last)
            else:
                logits = model(**enc).logits.float()
            if not decoder or logits.dim() == 2:
                rows = [c.reshape(1) for c in _label_logprob(F.log_softmax(logits, -1), idx, view, None)]
            elif label_only:  # members' labels were trained: the label's log-probability after the prompt
                lp = F.log_softmax(logits[torch.arange(len(chunk)), last], -1)
                rows = [c.reshape(1) for c in _label_logprob(lp, idx, view, view.label_token_ids)]
            else:
                lp = F.log_softmax(logits[:, :-1], -1).gather(-1, enc["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
                mask = enc["attention_mask"][:, 1:].bool()
                rows = [row[m] for row, m in zip(lp, mask)]
            for i, row in zip(idx, rows):
                out[i] = row.cpu()
        return out


def start_is_trained(view: AttackerView) -> bool:
    """Whether the public model carries a trained global delta: the start the server knows for the
    client (which the public model merges) changes some weight, i.e. the federation has trained."""
    return any(bool(torch.count_nonzero(f.delta())) for f in (view.prev or {}).values())


def primary_score(score: str, view: AttackerView) -> tuple[str, str]:
    """The primary score for ``view`` and why: an explicit choice as given; ``auto`` by the rule in
    the module docstring (``ref`` against a trained start, ``loss`` otherwise)."""
    if score != AUTO:
        return score, "chosen in the attack's parameters"
    if start_is_trained(view):
        return "ref", "auto: the public model carries a trained global delta, a reference for the task"
    return "loss", "auto: the public model is the untrained base (no global delta yet), no reference for the task"


def _label_logprob(lp: Tensor, idx: Sequence[int], view: AttackerView, vocab_ids: Sequence[int] | None) -> Tensor:
    """Per row of ``lp`` (log-probabilities over classes or the vocabulary), the candidate's own
    label's log-probability when the view gives labels (and, for a decoder, the verbalizer), else the
    model's confidence in its top prediction."""
    labels = view.candidate_labels
    if labels is None or (vocab_ids is not None and not vocab_ids):
        return lp.max(-1).values
    cls = torch.tensor([labels[i] for i in idx], device=lp.device)
    cols = cls if vocab_ids is None else torch.tensor(list(vocab_ids), device=lp.device)[cls]
    return lp.gather(-1, cols.unsqueeze(1)).squeeze(1)


def _label_only_for(tokens: str, task: str) -> bool:
    return tokens == "label" or (tokens == "auto" and task == "classification")


def _filled(observed: Tensor | None, hidden: Tensor | None, start: Tensor, adaptive: bool) -> Tensor | None:
    if observed is None:
        return start if adaptive else None
    full = observed.detach().float().cpu()
    if adaptive and hidden is not None:
        full = torch.where(hidden.bool().cpu(), start, full)
    return full


def module_delta(om: ObservedModule, prev: Any, adaptive: bool) -> Tensor | None:
    """The visible change s*B@A - s*B0@A0 of one module (None when nothing usable is visible)."""
    A0 = prev.A.detach().float().cpu() if prev is not None else None
    B0 = prev.B.detach().float().cpu() if prev is not None else None
    A_obs = om.A
    A_hidden = om.A_hidden
    if adaptive and A_obs is not None and om.column_order is not None:
        inv = torch.empty(A_obs.shape[1], dtype=torch.long)
        inv[torch.tensor(om.column_order)] = torch.arange(A_obs.shape[1])
        A_obs = A_obs[:, inv]
        A_hidden = A_hidden[:, inv] if A_hidden is not None else None
    if A0 is None:
        if A_obs is None or om.B is None:
            return None
        return om.scale * (om.B.detach().float().cpu() @ A_obs.detach().float().cpu())
    A = _filled(A_obs, A_hidden, A0, adaptive)
    B = _filled(om.B, om.B_hidden, B0, adaptive)
    if A is None or B is None:
        return None
    return om.scale * (B @ A) - prev.scale * (B0 @ A0)


def visible_deltas(view: AttackerView, adaptive: bool) -> dict[str, Tensor]:
    out = {}
    for name, om in view.modules.items():
        prev = view.prev.get(name) if view.prev else None
        d = module_delta(om, prev, adaptive)
        if d is not None and torch.isfinite(d).all():
            out[name] = d
    return out


@contextmanager
def applied(model: nn.Module, deltas: Mapping[str, Tensor]) -> Iterator[None]:
    """Add each delta to its module's weight (transposed for Conv1D layouts) and restore the exact
    original weights afterwards."""
    found = locate(model, list(deltas))
    saved: list[tuple[Tensor, Tensor]] = []
    try:
        with torch.no_grad():
            for name, am in found.items():
                w = am.module.weight
                d = deltas[name]
                d = d if d.shape == w.shape else d.T
                if d.shape != w.shape:
                    continue
                saved.append((w, w.detach().clone()))
                w.add_(d.to(w))
        yield
    finally:
        with torch.no_grad():
            for w, orig in saved:
                w.copy_(orig)
