"""The public language model's next-token prior for prefixes that grow one token at a time.

Decoding attacks ask the prior about a few hypotheses per step, each one token longer than a
hypothesis of the step before. Keeping each prefix's key/value cache turns a step's full forward over
every hypothesis (length L, all layers) into a forward of one token per hypothesis.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks.toolkit.probing import cache_kwarg, device_of, forward_params, last_logits


class PrefixPrior:
    """``log_probs(prefixes)`` -> (N, V) next-token log-probabilities (float32, CPU) of equal-length
    prefixes; caches of the last ``keep`` prefixes are kept for their one-token extensions."""

    def __init__(self, model: nn.Module, keep: int = 64) -> None:
        self.model = model
        self.keep = keep
        self._store: OrderedDict[tuple[int, ...], list[tuple[Tensor, Tensor]]] = OrderedDict()
        try:
            from transformers import DynamicCache
        except ImportError:
            DynamicCache = None  # noqa: N806
        self._cache_cls = DynamicCache
        params = forward_params(model)
        self._kw = cache_kwarg(model) if DynamicCache is not None and "use_cache" in params else None
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    @torch.no_grad()
    def log_probs(self, prefixes: Sequence[Sequence[int]]) -> Tensor:
        ids = torch.tensor([list(p) for p in prefixes], dtype=torch.long, device=device_of(self.model))
        if self._kw is None:
            return F.log_softmax(last_logits(self.model, ids).float(), -1).cpu()
        parents = [self._store.get(tuple(p[:-1])) for p in prefixes]
        if ids.shape[1] >= 2 and all(parents):
            layers = [(torch.cat([p[i][0] for p in parents]), torch.cat([p[i][1] for p in parents]))
                      for i in range(len(parents[0]))]
            cache = self._cache_cls(ddp_cache_data=layers)
            out = self.model(input_ids=ids[:, -1:], use_cache=True, **{self._kw: cache}, **self._last_only)
        else:
            cache = self._cache_cls()
            out = self.model(input_ids=ids, use_cache=True, **{self._kw: cache}, **self._last_only)
        for i, p in enumerate(prefixes):
            self._store[tuple(p)] = [(layer.keys[i : i + 1], layer.values[i : i + 1]) for layer in cache.layers]
            self._store.move_to_end(tuple(p))
        while len(self._store) > max(self.keep, 2 * len(prefixes)):  # a step's parents survive to the next step
            self._store.popitem(last=False)
        return F.log_softmax(out.logits[:, -1].float(), -1).cpu()
