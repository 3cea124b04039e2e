"""Time per probe case of the span attacks (DAGER, FedSpy, UTR) on a SmolLM2-shaped round-1 view.

Issue 30's targets, one core: DAGER <= 10 s at batch 4 and <= 30 s at 16, FedSpy <= 15 s at batch 4,
UTR <= 60 s at batch 16, the adaptive mode within 2x of the naive one. The view is the paper suite's
``r1_server`` probe (rank-256 LoRA on q_proj and v_proj, the server's own round-1 start, the client's
gradient) on a random-init model of SmolLM2-135M's shape (``spanviews``): no weights to load, every
pass at its real cost. Each sample is one whole case, the vocabulary pass included; the view is built
once per benchmark process. ``SpanAdaptive`` times both modes on a SHE-LoRA-like view (a later
round's gradient, 5% of A's columns hidden and 16 visible ones shuffled), where the adaptive mode
refits trimmed distances.
"""

from __future__ import annotations

from typing import Any

from .common import Bench, memo, need, seed_all

ATTACKS = {"dager": ("attacks.dager", "DAGER"), "fedspy": ("attacks.fedspy", "FedSpy"), "utr": ("attacks.utr", "UTR")}


class _Case(Bench):
    number = 1
    rounds = 1
    repeat = (1, 3, 60.0)
    warmup_time = 0.0
    timeout = 900

    def _prepare(self, attack: str, key: tuple, **view: Any) -> None:
        seed_all()
        spanviews = need("benchmark.asv_bench.spanviews")
        module, name = ATTACKS[attack]
        cls = getattr(need(module), name, None)
        if cls is None or not hasattr(cls, "Params"):
            raise NotImplementedError(f"{module}.{name} with a Params class is not at this commit")
        self.attack = {m: cls(cls.Params(mode=m)) for m in ("naive", "adaptive")}
        try:
            self.view = memo(key, lambda: spanviews.case("smollm2", **view))
        except Exception as exc:  # SmolLM2's tokenizer package missing
            raise NotImplementedError(f"no SmolLM2-shaped view: {type(exc).__name__}: {exc}") from exc
        spanviews.forget_vocabulary()

    def _run(self, mode: str = "naive") -> None:
        rec = self.attack[mode].reconstruct(self.view)
        if rec.status != "ok":
            raise RuntimeError(f"{type(self.attack[mode]).__name__} abstained: {rec.note}")


class SpanAttack(_Case):
    """One round-1 probe case per attack and batch size (naive mode: the view hides nothing)."""

    version = "1"
    params = [["dager", "fedspy", "utr"], [4, 16]]
    param_names = ["attack", "batch"]

    def setup(self, attack: str, batch: int) -> None:
        self._prepare(attack, ("span", batch), batch=batch)

    def time_case(self, attack: str, batch: int) -> None:
        self._run()


class SpanAdaptive(_Case):
    """DAGER naive and adaptive on a SHE-LoRA-like view of a later round (trimmed distances)."""

    version = "1"
    params = [["naive", "adaptive"], [4, 8]]
    param_names = ["mode", "batch"]

    def setup(self, mode: str, batch: int) -> None:
        self._prepare("dager", ("permuted", batch), batch=batch, b_std=0.02, hide=0.05, permute=16)

    def time_case(self, mode: str, batch: int) -> None:
        self._run(mode)
