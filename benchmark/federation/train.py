"""Turning examples into batches, local LoRA training of one client, and held-out evaluation.

Classification with a decoder uses the language-model head as a verbalizer: the input is the
template followed by the label word, the loss sits on the label token alone, and accuracy compares
the label words' logits. Encoders use a classification head. Instruction tuning puts the causal-LM
loss on the response tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.config import TrainConfig
from benchmark.contract import ClientInfo, ClientRole, ClientUpdate, LoRAFactors
from benchmark.federation.data import Example
from benchmark.federation.lora import LoRAHost


@dataclass(frozen=True)
class TaskSpec:
    """How examples become model inputs (public: the attacker knows the format)."""

    task: str  # classification | instruction
    arch: str  # decoder | encoder
    template: str
    label_names: tuple[str, ...]
    seq_len: int

    def prompt(self, ex: Example) -> str:
        return self.template.format(text=ex.text)

    @property
    def prompt_tokens(self) -> int:
        """The most tokens of a prompt a training example keeps (``encode`` cuts longer prompts there and
        trains what follows): a decoder classifier's label comes after at most ``seq_len - 1`` prompt
        tokens, an instruction's response after at most half the sequence; an encoder reads ``seq_len``
        tokens, its special tokens included."""
        if self.arch == "encoder":
            return self.seq_len
        return self.seq_len - 1 if self.task == "classification" else max(1, self.seq_len // 2)

    def private_format(self) -> tuple[str, tuple[str, ...]]:
        """The template and label words around private text in the model's input (encoders see the
        bare text; decoders the template, and for classification the label word after it)."""
        if self.arch != "decoder":
            return "{text}", ()
        return self.template, self.label_names if self.task == "classification" else ()


def label_token_ids(tokenizer, label_names: Sequence[str]) -> list[int]:
    """The first token of `` <label>`` for each label: the verbalizer's vocabulary."""
    ids = [tokenizer(f" {name}", add_special_tokens=False).input_ids[0] for name in label_names]
    if len(set(ids)) != len(ids):
        raise ValueError(f"label words {list(label_names)} share a first token; choose distinct label names")
    return ids


def verbalizer(tokenizer, spec: TaskSpec) -> tuple[int, ...]:
    """A decoder classifier's label token ids (the public task format); empty for other tasks."""
    if spec.task != "classification" or spec.arch != "decoder":
        return ()
    return tuple(label_token_ids(tokenizer, spec.label_names))


def encode(tokenizer, spec: TaskSpec, examples: Sequence[Example]) -> dict[str, Tensor]:
    """A right-padded batch with ``labels`` (-100 where no loss applies); padding never leaks into
    the loss or into earlier positions (causal attention), so the update depends on real tokens only."""
    if spec.arch == "encoder":
        enc = tokenizer([ex.text for ex in examples], truncation=True, max_length=spec.prompt_tokens, padding=True,
                        return_tensors="pt")
        enc["labels"] = torch.tensor([ex.label for ex in examples])
        return dict(enc)
    rows, targets = [], []
    label_ids = label_token_ids(tokenizer, spec.label_names) if spec.task == "classification" else []
    for ex in examples:
        prompt = tokenizer(spec.prompt(ex), add_special_tokens=False).input_ids
        prompt = prompt[: spec.prompt_tokens]
        if spec.task == "classification":
            answer = [label_ids[ex.label]]
        else:
            answer = tokenizer(" " + ex.response, add_special_tokens=False).input_ids
            if tokenizer.eos_token_id is not None:
                answer = answer + [tokenizer.eos_token_id]
            answer = answer[: spec.seq_len - len(prompt)]
        rows.append(prompt + answer)
        targets.append([-100] * len(prompt) + answer)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = torch.tensor([t + [-100] * (width - len(t)) for t in targets])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def causal_outputs(model, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, targets, loss) of a causal LM at the positions that predict a labelled token only.

    Why: the LM head (576 x 49,152 for SmolLM2) over every position was about a fifth of a
    training step and most of the evaluation's memory, yet classification scores one position
    per row. ``logits[:, j]`` predicts ``targets[:, j]`` (-100: no loss there); the loss is the
    model's own (mean cross-entropy over labelled tokens), computed on the kept positions.
    """
    labels = batch["labels"]
    keep = (labels[:, 1:] != -100).any(0).nonzero().squeeze(1)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep).logits
    targets = labels[:, keep + 1]
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
    return logits, targets, loss


def compute_loss(model, batch: dict[str, Tensor]) -> Tensor:
    """The training loss: per-token labels (a decoder's batch from ``encode``) go through
    ``causal_outputs``; per-row labels (encoders) through the model's own loss."""
    if batch["labels"].dim() == 2:
        return causal_outputs(model, batch)[2]
    return model(**batch).loss


def to_device(batch: dict[str, Tensor], device: str) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@dataclass
class LocalResult:
    update: ClientUpdate
    head: dict[str, Tensor]
    loss: float | None  # None: no training happened (the cost engine's random updates)
    train_s: float | None
    texts: list[str]  # what the client trained on, as prompts (membership ground truth; never on the wire)
    examples: list[Example]  # the same examples (the truth when this upload is attacked)


def local_train(
    host: LoRAHost,
    client: ClientInfo,
    start: dict[str, LoRAFactors],
    examples: Sequence[Example],
    n_samples: int,
    spec: TaskSpec,
    cfg: TrainConfig,
    tokenizer,
    generator: torch.Generator,
    round_index: int,
    device: str = "cpu",
    head_start: dict[str, Tensor] | None = None,
    role: ClientRole | None = None,
) -> LocalResult:
    """Train ``client``'s own-rank adapter from ``start`` for ``cfg.local_steps`` steps, through the
    defense client role's training wrapper (DP-SGD) when one is given."""
    t0 = time.perf_counter()
    host.use(client.rank)
    host.set_factors(client.rank, start)
    head = host.head_parameters()
    if head_start:
        with torch.no_grad():
            for n, p in head.items():
                p.copy_(head_start[n])
    params = host.lora_parameters(client.rank) + list(head.values())
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    order = torch.randperm(len(examples), generator=generator).tolist()
    needed = cfg.local_steps * cfg.batch_size
    picks = [order[i % len(order)] for i in range(needed)]
    batches = [[examples[i] for i in picks[s * cfg.batch_size : (s + 1) * cfg.batch_size]] for s in range(cfg.local_steps)]
    loader: object = [encode(tokenizer, spec, b) for b in batches]
    model = host.model
    model.train()
    if role is not None:
        model, opt, loader = role.wrap_training(model, opt, loader, client)
    sums: dict[str, Tensor] = {}
    mask_ref: list[Tensor | None] = [None]
    seen, losses = 0, []
    for batch in loader:
        batch = to_device(batch, device)
        opt.zero_grad(set_to_none=True)
        if seen < cfg.calibration_samples:
            mask_ref[0] = batch["attention_mask"]
            with host.input_norm_hooks(sums, mask_ref):
                loss = compute_loss(model, batch)
            seen += int(batch["input_ids"].shape[0])
        else:
            loss = compute_loss(model, batch)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    grads = host.get_grads(client.rank)
    if role is not None:
        role.release()
    host.model.eval()
    update = ClientUpdate(
        client=client,
        round=round_index,
        factors=host.get_factors(client.rank),
        n_samples=n_samples,
        input_sq_norms=sums,
        grads=grads,
        prev=start,
        kind="weights",
    )
    head_state = {n: p.detach().cpu().clone() for n, p in head.items()}
    texts = [spec.prompt(ex) for b in batches for ex in b]
    seen = [ex for b in batches for ex in b]
    return LocalResult(update, head_state, sum(losses) / max(1, len(losses)), time.perf_counter() - t0, texts, seen)


def seen_private(tokenizer, spec: TaskSpec, examples: Sequence[Example]) -> tuple[list[str], list[list[int]]]:
    """The private part of each example as the model saw it, the truth every reconstruction is scored
    against: its input tokens (truncated to ``seq_len``; for decoders only the prompt, never the label
    or response), special tokens dropped, as text with the template's literal pieces removed, and as
    ids with the template's literal head and tail removed where their own ids begin and end the prompt
    (a tail cut off by truncation is simply absent)."""
    from benchmark.running.metrics import private_text

    batch = encode(tokenizer, spec, examples)
    template, labels = spec.private_format()
    head, _, tail = template.partition("{text}")
    # a head's trailing space merges into the first private word (" my"), so its own ids may end early
    heads = [tokenizer(h, add_special_tokens=False).input_ids for h in dict.fromkeys((head, head.rstrip())) if h.strip()]
    tails = [tokenizer(t, add_special_tokens=False).input_ids for t in dict.fromkeys((tail, tail.lstrip(" "))) if t.strip()]
    special = set(tokenizer.all_special_ids)
    texts, ids = [], []
    for i in range(len(examples)):
        keep = batch["attention_mask"][i].bool()
        if spec.arch == "decoder":
            keep &= batch["labels"][i] == -100
        seen = [t for t in batch["input_ids"][i][keep].tolist() if t not in special]
        texts.append(private_text(tokenizer.decode(seen, skip_special_tokens=True), template, labels))
        seen = seen[next((len(h) for h in heads if seen[: len(h)] == h), 0):]
        ids.append(seen[: len(seen) - next((len(t) for t in tails if seen[len(seen) - len(t):] == t), 0)])
    return texts, ids


@torch.no_grad()
def evaluate(model, tokenizer, spec: TaskSpec, examples: Sequence[Example], batch_size: int = 32,
             device: str = "cpu") -> dict[str, float]:
    """Accuracy (classification) or teacher-forced response-token accuracy (instruction), and loss."""
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    label_ids = label_token_ids(tokenizer, spec.label_names) if spec.task == "classification" and spec.arch == "decoder" else []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        batch = to_device(encode(tokenizer, spec, chunk), device)
        if spec.arch == "encoder":
            out = model(**batch)
            loss_sum += float(out.loss) * len(chunk)
            pred = out.logits.argmax(-1)
            correct += int((pred == batch["labels"]).sum())
            total += len(chunk)
            continue
        logits, targets, loss = causal_outputs(model, batch)
        loss_sum += float(loss) * len(chunk)
        mask = targets != -100
        if spec.task == "classification":
            picked = logits[mask][:, label_ids].argmax(-1)
            truth = torch.tensor([ex.label for ex in chunk], device=picked.device)
            correct += int((picked == truth).sum())
            total += len(chunk)
        else:
            correct += int((logits.argmax(-1)[mask] == targets[mask]).sum())
            total += int(mask.sum())
    metric = "accuracy" if spec.task == "classification" else "response_token_acc"
    utility = correct / max(1, total)
    lo, hi = wilson_interval(correct, total, len(examples))
    return {"utility_metric": metric, "utility": utility, "utility_lo": lo, "utility_hi": hi, "utility_n": len(examples),
            "eval_loss": loss_sum / max(1, len(examples))}


def wilson_interval(successes: int, trials: int, units: int, z: float = 1.959964) -> tuple[float | None, float | None]:
    """95% Wilson score interval of ``successes / trials`` with ``units`` independent units.

    Accuracy counts one trial per test example. Response-token accuracy counts tokens, which are not
    independent within an example, so the interval is widened to ``units`` (examples) trials, the
    count the data can vouch for (a design-effect bound: conservative, never narrower than per example)."""
    if trials <= 0 or units <= 0:
        return None, None
    p, n = successes / trials, min(trials, units)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
