"""What the attacker on the server holds: its view of one upload (visible values, masks, the start
it can reconstruct, a public model), and what an attack returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from benchmark.contract.messages import LoRAFactors


@dataclass(frozen=True)
class ObservedModule:
    """What the server sees of one module's update.

    ``A``/``B`` hold the visible values with hidden coordinates set to zero (``None`` when nothing of
    that factor is visible). ``A_hidden``/``B_hidden`` are boolean masks of what the server cannot
    read; the server always knows which coordinates it did not receive. ``column_order`` maps an
    observed column of A to the original input-feature index where the server can know it (``None``
    means identity). ``columns_permuted`` says a permutation the server lacks scrambles the columns;
    then ``foreign`` lists visible columns the server knows hold some other, unknown input feature
    (SHE-LoRA: the slots of global-list columns a client does not encrypt), and ``displaced`` bounds
    how many further visible columns may sit away from their own feature at positions the server
    cannot tell (0: no bound known).
    """

    A: Tensor | None
    B: Tensor | None
    scale: float
    A_hidden: Tensor | None = None
    B_hidden: Tensor | None = None
    column_order: tuple[int, ...] | None = None
    columns_permuted: bool = False
    foreign: tuple[int, ...] = ()
    displaced: int = 0


START_KNOWN = ("exact", "estimate", "none")


@dataclass(frozen=True)
class StartSpace:
    """Where one module's starting factors lie, as far as the server's own messages tell it, in the
    column order of its view of the client's upload (tensors on the CPU).

    Every starting row of A lies in span(``a_rows``) + span{e_j : j in ``a_free``}, except the rows
    ``a_loose``: those the server can replay only in another column order (padding a client drew in
    its original order while the view is permuted); ``a_loose_values`` holds that replay in the
    original column order. Every starting column of B lies in span(``b_cols``) + span{e_i : i in
    ``b_free``}; ``b_cols`` is ``None`` where the transcript bounds no column space (SHE-LoRA: the
    encrypted columns' lifts are ciphertext). ``a_rows``/``b_cols`` span the space, unnormalised
    (the broadcast's own vectors): an attack orthonormalises what it uses.

    Why this and not only a start estimate: an estimate errs wherever ciphertext stood (SHE-LoRA's
    re-factorisation spreads the error over every entry), but the space it lies in is exact, so an
    attack can project the start away instead of subtracting it.
    """

    a_rows: Tensor  # (d, n)
    a_free: tuple[int, ...] = ()
    a_loose: tuple[int, ...] = ()
    a_loose_values: Tensor | None = None  # (len(a_loose), n), original column order
    b_cols: Tensor | None = None  # (m, d')
    b_free: tuple[int, ...] = ()


@dataclass(frozen=True)
class StartKnowledge:
    """What the server can know of the factors a client started its round from.

    ``factors`` is the server's best reconstruction from messages it sent (``None``: nothing), in the
    column order its own view of that client's upload uses; ``known`` says whether that is ``exact``
    (the server can replay the client's deterministic finalize), an ``estimate`` (ciphertext or masks
    stand in the way) or ``none``. ``spaces`` says per module where an estimated start lies exactly
    (``StartSpace``; ``None`` when the server gives no such bound).
    """

    factors: Mapping[str, LoRAFactors] | None
    known: str
    note: str = ""
    spaces: Mapping[str, StartSpace] | None = None

    def __post_init__(self) -> None:
        if self.known not in START_KNOWN:
            raise ValueError(f"StartKnowledge.known must be one of {', '.join(START_KNOWN)}, got {self.known!r}")

    @classmethod
    def nothing(cls, note: str) -> StartKnowledge:
        return cls(None, "none", note)


@dataclass(frozen=True)
class AttackerView:
    """The only input of an attack: what an honest-but-curious server holds about one client update.

    Built by the engine from the server's transcript alone: ``modules`` is what the server role's
    ``observe`` exposes of the upload; ``prev`` the server's knowledge of the client's starting
    factors (``start_known`` says exact, estimate or none) and ``start_space`` the spaces an
    estimated start lies in (``StartSpace`` per module); ``model`` a public copy of the base model
    with the global delta the server can compute merged (never the client's adapter); ``lr``,
    ``local_steps``, ``batch_size`` are hyperparameters the server set; ``prompt_tokens`` the most
    tokens of a prompt a training example keeps (the public task format cuts longer prompts there and
    trains what follows, so a model fits a long member's label after its cut prompt, not after the
    whole text; ``None``: not known); ``candidates`` texts whose membership an inference attack scores,
    ``candidate_labels`` their labels (a classification record is a text with its label: the record
    whose membership is asked, as in Yeom et al. 2018; ``None``: unlabelled) and ``label_token_ids``
    the public verbalizer (a decoder classifier's vocabulary id per label; empty for encoders, whose
    class index is the logit index).
    """

    defense: str
    kind: str  # "grad" | "sgd" | "weights" (a real round upload)
    modules: Mapping[str, ObservedModule]
    leaked: Mapping[str, Any] = field(default_factory=dict)
    cipher_bytes: int = 0
    prev: Mapping[str, LoRAFactors] | None = None
    start_known: str = "none"
    start_space: Mapping[str, StartSpace] | None = None
    lr: float | None = None
    local_steps: int = 1
    batch_size: int | None = None
    model: Any = None
    tokenizer: Any = None
    task: str = "classification"
    template: str = "{text}"
    prompt_tokens: int | None = None
    candidates: Sequence[str] | None = None
    candidate_labels: Sequence[int] | None = None
    label_token_ids: Sequence[int] = ()
    note: str = ""
    summed: int = 1  # how many clients' updates the view sums (> 1: a secure aggregate, one batch of all)

    @property
    def is_clear(self) -> bool:
        """Nothing hidden, permuted or reordered: an attack's adaptive mode has nothing to adapt to."""
        for m in self.modules.values():
            for mask in (m.A_hidden, m.B_hidden):
                if mask is not None and bool(mask.any()):
                    return False
            if m.column_order is not None or m.columns_permuted:
                return False
        return True

    @property
    def has_plaintext(self) -> bool:
        return any(m.A is not None or m.B is not None for m in self.modules.values())

    @property
    def prev_exact(self) -> bool:
        return self.prev is not None and self.start_known == "exact"


RECONSTRUCTION_STATUS = ("ok", "abstained")


@dataclass
class Reconstruction:
    """An attack's output. ``texts`` are reconstructed inputs (one per recovered sequence);
    ``membership_scores`` align with ``AttackerView.candidates`` (higher = more likely member);
    ``membership_scores_by`` holds every score an attack computed, by name (the primary one included),
    each reported with its own AUC and TPR columns. ``extra`` holds the attack's own facts for its row
    (numbers, or a short text such as which score was primary), each its own column.

    ``status`` is ``abstained`` when the attack gave up (no usable input, a precondition unmet):
    ``note`` says why, and the cell is reported apart, never as a defense win."""

    texts: list[str] = field(default_factory=list)
    token_ids: list[list[int]] | None = None
    membership_scores: list[float] | None = None
    membership_scores_by: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, float | str] = field(default_factory=dict)
    note: str = ""
    status: str = "ok"

    @classmethod
    def abstain(cls, why: str, **extra: float) -> Reconstruction:
        return cls(note=why, status="abstained", extra=dict(extra))


