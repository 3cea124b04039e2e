"""Reading the exact inputs of adapted modules from the public model.

Span attacks compare candidate vectors with the row space of a LoRA gradient, so the candidates must be
the very tensors the adapted module multiplied: we capture them with forward pre-hooks on the module
itself (never from ``hidden_states``, whose last entry has the final norm applied) and abort the forward
pass as soon as every requested input has been seen, so probing layer 1 of a 30-layer model costs one
block, not thirty.
"""

from __future__ import annotations

import inspect
import re
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmark.contract.progress import tick

# Module leaf names whose input is the attention block's (normalized) input.
ATTN_INPUT_LEAVES = frozenset({"q_proj", "k_proj", "v_proj", "query", "key", "value", "c_attn", "qkv_proj", "Wqkv"})
_LAYER = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.")


class _Stop(Exception):
    """Raised from a hook once all wanted inputs are captured, to skip the rest of the forward."""


@dataclass(frozen=True)
class AdaptedModule:
    """An observed module located in the public model: its layer index and the ``nn.Module``."""

    name: str
    layer: int
    leaf: str
    module: nn.Module


def layer_index(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def locate(model: nn.Module, names: Sequence[str]) -> dict[str, AdaptedModule]:
    """Map canonical module names (peft prefix already stripped) to modules of ``model``.

    Names that do not resolve exactly are matched by suffix, so ``model.layers.0.self_attn.q_proj``
    still finds its module inside a wrapper that adds a prefix.
    """
    table = dict(model.named_modules())
    found: dict[str, AdaptedModule] = {}
    for name in names:
        mod = table.get(name)
        if mod is None:
            hits = [k for k in table if k.endswith("." + name) or name.endswith("." + k)]
            mod = table[min(hits, key=len)] if hits else None
        idx = layer_index("." + name)
        if mod is not None and idx is not None:
            found[name] = AdaptedModule(name, idx, name.rsplit(".", 1)[-1], mod)
    return found


def attention_inputs_by_layer(found: Mapping[str, AdaptedModule]) -> dict[int, list[AdaptedModule]]:
    """Group the modules that read the attention block input, by layer (lowest layer first)."""
    groups: dict[int, list[AdaptedModule]] = {}
    for am in found.values():
        if am.leaf in ATTN_INPUT_LEAVES:
            groups.setdefault(am.layer, []).append(am)
    return dict(sorted(groups.items()))


def is_decoder(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return True
    return bool(getattr(cfg, "is_decoder", False)) or not getattr(cfg, "model_type", "").startswith(
        ("bert", "roberta", "distilbert", "electra", "deberta", "albert", "xlm")
    )


def device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def cache_kwarg(model: nn.Module) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.2x); use whichever the model takes."""
    return "cache" if "cache" in forward_params(model) else "past_key_values"


def forward_params(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def last_logits(model: nn.Module, input_ids: Tensor, **kwargs: object) -> Tensor:
    """Logits at the last position (N, V), projecting only that position onto the vocabulary where
    the model allows it (the LM head is a large share of a short sequence's forward and backward)."""
    if "logits_to_keep" in forward_params(model):
        kwargs["logits_to_keep"] = 1
    return model(input_ids=input_ids.to(device_of(model)), **kwargs).logits[:, -1]


@torch.no_grad()
def capture_inputs(
    model: nn.Module,
    modules: Sequence[nn.Module],
    input_ids: Tensor,
    position_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    past_key_values: object | None = None,
) -> list[Tensor]:
    """Inputs (N, L, d) of ``modules`` for ``input_ids`` (N, L), stopping the forward early."""
    seen: dict[int, Tensor] = {}
    wanted = {id(m) for m in modules}

    def hook(mod: nn.Module, args: tuple) -> None:
        seen[id(mod)] = args[0].detach()
        if wanted <= seen.keys():
            raise _Stop

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    kwargs: dict = {"input_ids": input_ids.to(device_of(model))}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids.to(kwargs["input_ids"].device)
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.to(kwargs["input_ids"].device)
    if past_key_values is not None:
        kwargs.update({cache_kwarg(model): past_key_values, "use_cache": True})
    else:
        kwargs["use_cache"] = False
    try:
        try:
            model(**kwargs)
        except TypeError:  # models without a cache argument
            if past_key_values is not None:
                raise
            model(**{k: v for k, v in kwargs.items() if k != "use_cache"})
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [m for m in modules if id(m) not in seen]
    if missing:
        raise RuntimeError("forward pass never reached an adapted module")
    return [seen[id(m)].float() for m in modules]


def last_position_inputs(model: nn.Module, modules: Sequence[nn.Module], seqs: Tensor, chunk: int = 256) -> list[Tensor]:
    """Each module's input at the last position of every sequence in ``seqs`` (N, L) -> (N, d).

    Decoders score many one-token extensions of few prefixes; there each distinct prefix runs once
    with a key/value cache and only the last tokens run after it, side by side (the inputs are the
    same up to float rounding, at a fraction of the cost). Models without a usable cache take the
    plain path."""
    tick("scoring extensions")  # once per decoding step of every span attack
    if seqs.shape[1] >= 2 and is_decoder(model):
        got = _cached_last_inputs(model, modules, seqs)
        if got is not None:
            return got
    outs: list[list[Tensor]] = [[] for _ in modules]
    for start in range(0, seqs.shape[0], chunk):
        got = capture_inputs(model, modules, seqs[start : start + chunk])
        for i, g in enumerate(got):
            outs[i].append(g[:, -1, :].cpu())
    return [torch.cat(o) for o in outs]


def _cached_last_inputs(model: nn.Module, modules: Sequence[nn.Module], seqs: Tensor, chunk: int = 2048) -> list[Tensor] | None:
    """The extensions of each distinct prefix run as one row: the prefix once (its key/value cache),
    then all its candidate last tokens side by side at the same position, each masked to see the
    prefix and itself only, so each gets exactly the input it would get alone. No per-candidate copy
    of the prefix's cache is made. Checked per call on one candidate of the widest row against its own
    forward pass; None (the caller's plain path) where the model does not take the cache or the mask."""
    try:
        from transformers import DynamicCache
    except ImportError:
        return None
    prefixes, inverse = torch.unique(seqs[:, :-1], dim=0, return_inverse=True)
    counts = torch.bincount(inverse, minlength=len(prefixes))
    order = torch.argsort(inverse, stable=True)
    slot = torch.empty_like(inverse)
    slot[order] = torch.arange(len(order)) - (torch.cumsum(counts, 0) - counts)[inverse[order]]
    width, length = int(counts.max()), prefixes.shape[1]
    outs: list[Tensor] = []
    per = max(1, chunk // width)  # prefixes per pass
    for p0 in range(0, len(prefixes), per):
        rows = torch.nonzero((inverse >= p0) & (inverse < p0 + per)).flatten()
        group, at = inverse[rows] - p0, slot[rows]
        n_pre = min(per, len(prefixes) - p0)
        tokens = torch.zeros(n_pre, width, dtype=seqs.dtype)
        tokens[group, at] = seqs[rows, -1]
        cache = DynamicCache()
        try:
            capture_inputs(model, modules, prefixes[p0 : p0 + n_pre], past_key_values=cache)
            mask = _isolating_mask(n_pre, width, length, next(model.parameters()).dtype)
            got = capture_inputs(model, modules, tokens, position_ids=torch.full((n_pre, width), length),
                                 attention_mask=mask, past_key_values=cache)
        except (TypeError, AttributeError, ValueError, RuntimeError):
            return None
        if not outs:
            outs = [g.new_empty((seqs.shape[0], g.shape[-1])).cpu() for g in got]
        for out, g in zip(outs, got):
            out[rows] = g[group, at].cpu()
    probe = int(torch.nonzero(inverse == int(torch.argmax(counts)))[-1])  # in the widest row: isolation matters
    alone = capture_inputs(model, modules, seqs[probe : probe + 1])
    for out, g in zip(outs, alone):
        if not torch.allclose(out[probe], g[0, -1].cpu(), rtol=1e-4, atol=1e-5 * float(g.abs().max().clamp_min(1.0))):
            return None
    return outs


def _isolating_mask(rows: int, width: int, length: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(rows, 1, width, length + width) additive mask: query j sees the ``length`` cached positions
    and key ``length + j`` (itself), none of the other new tokens."""
    mask = torch.full((width, length + width), torch.finfo(dtype).min, dtype=dtype)
    mask[:, :length] = 0.0
    mask[torch.arange(width), length + torch.arange(width)] = 0.0
    return mask.expand(rows, 1, width, length + width)


_VOCAB_CACHE: dict[int, tuple[weakref.ref, dict]] = {}


def vocab_size(model: nn.Module, tokenizer: object | None = None) -> int:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None:
        return int(emb.weight.shape[0])
    return len(tokenizer)  # type: ignore[arg-type]


def vocab_inputs(model: nn.Module, modules: Sequence[nn.Module], position: int = 0, chunk: int = 8192) -> list[Tensor]:
    """The inputs of first-layer ``modules`` for every vocabulary token placed alone at ``position``:
    one (V, d) tensor per module, from a single pass. Cached per model object, since the embeddings
    and the first norm are frozen under LoRA and the same tensors serve every probe of a run."""
    key = (tuple(id(m) for m in modules), position)
    entry = _VOCAB_CACHE.get(id(model))
    if entry is None or entry[0]() is not model:
        entry = (weakref.ref(model), {})
        _VOCAB_CACHE.clear()  # one model at a time: these tensors are large
        _VOCAB_CACHE[id(model)] = entry
    cache = entry[1]
    if key in cache:
        return cache[key]
    V = vocab_size(model)
    tick("vocabulary pass")
    parts: list[list[Tensor]] = [[] for _ in modules]
    for start in range(0, V, chunk):
        ids = torch.arange(start, min(V, start + chunk)).unsqueeze(1)
        got = capture_inputs(model, modules, ids, position_ids=torch.full_like(ids, position))
        for i, g in enumerate(got):
            parts[i].append(g[:, 0, :].cpu())
    out = [torch.cat(p) for p in parts]
    if len(cache) > 8:  # position-dependent models: keep only a few positions
        cache.clear()
    cache[key] = out
    return out


def position_free(model: nn.Module, module: nn.Module) -> bool:
    """True when a token's first-layer input does not depend on its position (RoPE models), which
    makes the first-layer span check a single pass over the vocabulary."""
    ids = torch.tensor([[5], [17], [101]]) % vocab_size(model)
    a = capture_inputs(model, [module], ids, position_ids=torch.zeros_like(ids))[0]
    b = capture_inputs(model, [module], ids, position_ids=torch.full_like(ids, 3))[0]
    return bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6))


def decoder_blocks(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList] | None:
    """The module list holding a decoder's blocks (its parent, attribute name and the list): the
    longest ``ModuleList`` named like ``layers``/``h``/``blocks``; None when there is none."""
    best = None
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(mod, nn.ModuleList) and leaf in ("layers", "layer", "h", "blocks") and len(mod) > 0:
            if best is None or len(mod) > len(best[2]):
                parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
                best = (parent, leaf, mod)
    return best


class FromLayer:
    """Forward passes of a decoder that skip the blocks below ``start``.

    Label completion recomputes a sequence's logits and gradients many times with hooks only on the
    last adapted layers; everything below ``start`` is the same every time. Here a sequence's residual
    stream entering block ``start`` is computed once (kept for the last ``keep`` sequences) and later
    passes feed it as ``inputs_embeds`` through the blocks from ``start`` on. Whether that reproduces
    the full forward (no embedding scaling or absolute positions applied to ``inputs_embeds``) is
    checked once on a short input; where it does not, every pass is a plain full forward. Hooks on
    blocks below ``start`` would not fire on a resumed pass: callers hook only blocks from ``start``.
    """

    def __init__(self, model: nn.Module, start: int, keep: int = 64) -> None:
        self.model = model
        self.start = start
        self.keep = keep
        self._store: OrderedDict[tuple[int, ...], Tensor] = OrderedDict()
        self._blocks = decoder_blocks(model) if start > 0 and "inputs_embeds" in forward_params(model) else None
        self.resumes = self._blocks is not None and start < len(self._blocks[2]) and self._agrees()

    def hidden(self, ids: Tensor) -> Tensor:
        """The residual stream entering block ``start`` for each row of ``ids`` (N, L) -> (N, L, d)."""
        rows = [tuple(r) for r in ids.tolist()]
        todo = list({r: i for i, r in enumerate(rows) if r not in self._store}.values())  # each new row once
        if todo:
            block = self._blocks[2][self.start]
            got = capture_inputs(self.model, [block], ids[todo])[0]
            for j, i in enumerate(todo):
                self._store[rows[i]] = got[j]
        for r in rows:
            self._store.move_to_end(r)
        out = torch.stack([self._store[r] for r in rows])
        while len(self._store) > max(self.keep, len(rows)):
            self._store.popitem(last=False)
        return out

    def __call__(self, ids: Tensor, **kwargs: object) -> object:
        """``model(input_ids=ids, **kwargs)``, skipping the blocks below ``start`` where that is exact."""
        ids = ids.to(device_of(self.model))
        if not self.resumes:
            return self.model(input_ids=ids, **kwargs)
        h = self.hidden(ids).to(next(self.model.parameters()).dtype)
        with self._skipping():
            return self.model(inputs_embeds=h, use_cache=False, **kwargs)

    def last_logits(self, ids: Tensor) -> Tensor:
        """Logits at the last position (N, V), as ``last_logits`` computes them."""
        kwargs = {"logits_to_keep": 1} if "logits_to_keep" in forward_params(self.model) else {}
        return self(ids, **kwargs).logits[:, -1]

    @contextmanager
    def _skipping(self) -> Iterator[None]:
        parent, attr, blocks = self._blocks
        setattr(parent, attr, nn.ModuleList(list(blocks)[self.start :]))
        try:
            yield
        finally:
            setattr(parent, attr, blocks)

    @torch.no_grad()
    def _agrees(self) -> bool:
        ids = (torch.arange(3).unsqueeze(0) * 7 + 5) % vocab_size(self.model)
        try:
            full = last_logits(self.model, ids.to(device_of(self.model)))
            self.resumes = True
            fast = self.last_logits(ids)
        except Exception:  # any model this trick does not fit: plain forwards
            return False
        finally:
            self._store.clear()
        return bool(torch.allclose(full, fast, rtol=1e-4, atol=1e-5 * float(full.abs().max().clamp_min(1.0))))
