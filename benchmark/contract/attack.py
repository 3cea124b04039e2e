"""An attack: what it targets, its parameters, what it requires of a view, its metrics with their
direction, and whether its modes differ only on hidden coordinates. It sees only an
``AttackerView``; the harness alone holds the truth and scores it."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from benchmark.contract.views import AttackerView, Reconstruction

# What an attack can target, and what that means for its cells.
ATTACK_TARGETS: Mapping[str, str] = {
    "probe": "a probe case's view, the target client's probe update; one cell per probe case",
    "round": "the round upload with membership candidates; one cell",
}
ATTACK_MODES = ("naive", "adaptive")

# What a view can offer an attack, in the order an attack checks them (the first one missing is the
# abstention reason): the test a view must pass, and why an attack cannot run without it.
VIEW_OFFERS: Mapping[str, tuple[Callable[[AttackerView], bool], str]] = {
    "plaintext": (lambda v: v.has_plaintext, "no plaintext update visible (ciphertext only)"),
    "model": (lambda v: v.model is not None and v.tokenizer is not None,
              "the view carries no public model or tokenizer"),
    "candidates": (lambda v: bool(v.candidates), "the view carries no membership candidates"),
    "grad": (lambda v: v.kind == "grad", "the view holds no single-step gradient"),
    "one_client": (lambda v: v.summed <= 1, "the view is the sum of several clients' updates (secure aggregation): "
                                            "this attack reads one client's update"),
}


def view_lacks(view: AttackerView | None, requires: frozenset[str]) -> list[str]:
    """What of ``requires`` the view does not offer (sorted; empty when it offers all).

    The runner records a cell whose view lacks something as ``incompatible`` before the attack runs;
    ``None`` stands for no view at all (the target client sent nothing that round)."""
    if view is None:
        return ["a view (the target client sent nothing this round)"]
    return [r for r in sorted(requires) if not VIEW_OFFERS[r][0](view)]


class Abstain(Exception):  # noqa: N818 - a signal carrying the reason, not an error
    """Raised anywhere inside ``Attack._reconstruct`` (or a toolkit helper it calls) to give up on a
    view: ``Attack.reconstruct`` turns it into ``Reconstruction.abstain(reason)``, so a precondition
    checked deep in shared code needs no return-value plumbing through every attack."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AttackParams:
    """The base of every attack's ``Params``: frozen (a cell hashes them) and with a ``mode``.

    ``attack`` names the registered attack, so that a bad value is reported as ``<attack>.<param>``,
    the key a user writes in ``--set attack.<attack>.<param>=...``. Subclasses add fields with
    ``field(default=..., metadata={"help": ...})`` and call ``super().__post_init__()`` first."""

    attack: ClassVar[str] = "attack"
    mode: str = field(default="naive", metadata={"help": "naive: the published attack as is; adaptive: also "
                                                         "uses what the transcript reveals (hidden masks, a "
                                                         "known column order)"})

    def __post_init__(self) -> None:
        self.require_choice("mode", ATTACK_MODES)

    def require(self, param: str, ok: bool, valid: str) -> None:
        """Raise ``ValueError("<attack>.<param> must be <valid>, got <value>")`` unless ``ok``."""
        if not ok:
            raise ValueError(f"{self.attack}.{param} must be {valid}, got {getattr(self, param)!r}")

    def require_at_least(self, low: float, *params: str) -> None:
        """Each of ``params`` is >= ``low`` (counts, sizes and weights)."""
        for param in params:
            self.require(param, getattr(self, param) >= low, f">= {low}")

    def require_fraction(self, *params: str) -> None:
        """Each of ``params`` is in (0, 1] (relative thresholds and shares)."""
        for param in params:
            self.require(param, 0 < getattr(self, param) <= 1, "in (0, 1]")

    def require_choice(self, param: str, choices: Sequence[str]) -> None:
        """``param`` is one of ``choices``."""
        self.require(param, getattr(self, param) in choices, f"one of {', '.join(choices)}")


# Every control runs against this defense (no protection): a control measures the instrument, not a defense.
CONTROL_DEFENSE = "plain_lora"
# The scenario a control is scaled down to for the test suite (tiny random Llama, MiniLM tokenizer).
CONTROL_TEST_SCENARIO = "tiny"
CONTROL_PREFIX = "control_"


def control_label(attack: str) -> str:
    """The scenario label of ``attack``'s control in the ``calibration`` suite; a report finds the
    control's rows by it."""
    return f"{CONTROL_PREFIX}{attack}"


def gradient_probe(batch_sizes: Sequence[int], batches: int = 3, rnd: int = 1, rank: int | None = None,
                   **more: Any) -> dict[str, Any]:
    """Control overrides for the gradient a client computes at factors the server drew (``threat.init =
    server``), probed in round ``rnd`` with ``batches`` private batches of each size: in round 1 B = 0
    and the server knows A0 exactly, the setting where span attacks are published to work. ``rank``
    puts every client in one tier of that rank (test-scale controls); ``more`` adds entries (a model)."""
    tiers = {"tiers": [{"name": "high", "fraction": 1.0, "rank": rank, "budget": 0.1}]} if rank else {}
    return {**more, "rounds": rnd, **tiers, "probe": {"batches": batches},
            "threat": {"init": "server", "observation": "grad", "round": rnd, "batch_sizes": list(batch_sizes)}}


@dataclass(frozen=True)
class Control:
    """A positive control: a setting where the attack's published method is known to work against
    plain LoRA, and the floor its primary metric must reach there.

    An attack is a measuring instrument: a defense's low score means something only where the same
    attack, in the same harness, scores high with no defense. ``scenario`` (a registered name) and
    ``overrides`` (the shape of a suite scenario entry or ``--set``: ``{"threat": {"batch_sizes": [1, 2]}}``)
    give the real-scale setting that the ``calibration`` suite runs; ``params`` the attack's own
    parameters there. ``metric`` (one of the attack's metrics, higher meaning the attack recovered
    more) must reach ``floor`` as the mean over the control's cases (one AUC for a round attack).
    ``tiny`` and ``tiny_floor`` are the same control scaled to the ``tiny`` scenario, which the test
    suite runs on every change; ``why`` says where the setting and floor come from."""

    scenario: str
    overrides: Mapping[str, Any]
    metric: str
    floor: float
    why: str
    tiny: Mapping[str, Any] = field(default_factory=dict)
    tiny_floor: float = 0.0
    params: Mapping[str, Any] = field(default_factory=dict)

    def problems(self, metrics: Mapping[str, bool]) -> list[str]:
        """What is wrong with this declaration for an attack with ``metrics`` (empty when nothing)."""
        out = []
        if not isinstance(self.scenario, str) or not self.scenario:
            out.append("scenario must name a registered scenario")
        if not isinstance(self.overrides, Mapping) or not isinstance(self.tiny, Mapping) or not isinstance(self.params, Mapping):
            out.append("overrides, tiny and params must be mappings")
        if self.metric not in metrics:
            out.append(f"metric {self.metric!r} is not one of the attack's metrics ({', '.join(metrics)})")
        elif not metrics[self.metric]:
            out.append(f"metric {self.metric!r} is lower-is-better for the attack; a floor needs one where higher "
                       "means the attack recovered more")
        for key in ("floor", "tiny_floor"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not 0 < value <= 1:
                out.append(f"{key} must be in (0, 1], got {value!r}")
        if not isinstance(self.why, str) or not self.why.strip():
            out.append("why must say where the setting and the floor come from")
        return out


class Attack:
    """An attack reconstructs private inputs (or scores membership) from an ``AttackerView`` alone.

    A registered attack subclasses this and declares every class attribute below; a missing or
    malformed declaration is refused when the class is defined (``__init_subclass__``), so the runner,
    ``shebench show`` and the tests read the contract instead of probing for it. ``reconstruct`` is a
    template: it abstains when the view lacks what ``requires`` names (with the reason), then calls the
    attack's own ``_reconstruct``, turning an ``Abstain`` raised there into an abstention. An attack
    that gives up is reported apart, never as a defense win.
    """

    name: ClassVar[str]
    """The registry name; rows and ``--set attack.<name>.<param>`` use it."""
    version: ClassVar[str]
    """Bumped when results change for the same params: part of every cell key."""
    target: ClassVar[str]
    """What it attacks (one of ``ATTACK_TARGETS``): ``"probe"``, a probe case's view (one cell per
    case), or ``"round"``, the round upload with membership candidates (one cell)."""
    Params: ClassVar[type[AttackParams]]
    """Its frozen parameter dataclass, with ``mode`` and help on every field."""
    requires: ClassVar[frozenset[str]]
    """What a view must offer (keys of ``VIEW_OFFERS``); a cell whose view lacks one is recorded as
    ``incompatible``, never crashed."""
    metrics: ClassVar[Mapping[str, bool]]
    """Each metric it is scored on, True when higher means the attack recovered more (the report reads
    directions from here, never guesses)."""
    control: ClassVar[Control]
    """Its positive control (``Control``): where its published method works against plain LoRA, and
    the floor its primary metric reaches there. The ``calibration`` suite runs every control; a report
    gives no verdict on a defense from an attack whose control was not met."""
    reads_sums: ClassVar[bool] = False
    """True when the attack also reads the sum of several clients' updates (``AttackerView.summed`` > 1,
    a server under secure aggregation) as one batch of all their examples, as span attacks do; False
    (the default): such a view is ``incompatible`` (see ``needs``)."""
    modes_differ_only_on_hidden: ClassVar[bool] = False
    """True when adaptive mode differs from naive only in how it treats hidden or permuted coordinates:
    on a clear view both modes give the same answer, so the runner computes it once."""

    _DECLARED = ("name", "version", "target", "Params", "requires", "metrics", "control")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        missing = [a for a in cls._DECLARED if not hasattr(cls, a)]
        if missing:
            raise TypeError(f"attack class {cls.__qualname__} does not declare {', '.join(missing)} "
                            f"(every Attack declares {', '.join(cls._DECLARED)})")
        if cls.target not in ATTACK_TARGETS:
            raise TypeError(f"{cls.__qualname__}.target must be one of {', '.join(ATTACK_TARGETS)}, got {cls.target!r}")
        if not (isinstance(cls.Params, type) and issubclass(cls.Params, AttackParams)):
            raise TypeError(f"{cls.__qualname__}.Params must be a frozen dataclass subclassing AttackParams, "
                            f"got {cls.Params!r}")
        if cls.Params.attack != cls.name:
            raise TypeError(f"{cls.Params.__qualname__}.attack must be {cls.name!r} (the attack's name), "
                            f"got {cls.Params.attack!r}")
        unknown = set(cls.requires) - set(VIEW_OFFERS)
        if unknown:
            raise TypeError(f"{cls.__qualname__}.requires names {', '.join(sorted(unknown))}; a view offers "
                            f"{', '.join(VIEW_OFFERS)}")
        if not cls.metrics or not all(isinstance(v, bool) for v in cls.metrics.values()):
            raise TypeError(f"{cls.__qualname__}.metrics must map each metric to True (higher is better) or False")
        if not isinstance(cls.control, Control):
            raise TypeError(f"{cls.__qualname__}.control must be a Control (scenario, overrides, metric, floor, why), "
                            f"got {cls.control!r}")
        wrong = cls.control.problems(cls.metrics)
        if wrong:
            raise TypeError(f"{cls.__qualname__}.control: {'; '.join(wrong)}")

    def __init__(self, params: AttackParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def needs(cls) -> frozenset[str]:
        """What a view must offer: ``requires``, and ``one_client`` unless the attack ``reads_sums``."""
        return frozenset(cls.requires) | (frozenset() if cls.reads_sums else frozenset({"one_client"}))

    def reconstruct(self, view: AttackerView) -> Reconstruction:
        """The attack's answer for ``view``: an abstention with the reason when ``unusable`` finds one
        or ``_reconstruct`` raises ``Abstain``, else what ``_reconstruct`` returns."""
        why = self.unusable(view)
        if why:
            return Reconstruction.abstain(why)
        try:
            return self._reconstruct(view)
        except Abstain as gave_up:
            return Reconstruction.abstain(gave_up.reason)

    def unusable(self, view: AttackerView) -> str:
        """Why the attack cannot run on ``view`` ("" when it can): by default, the first requirement
        of ``requires`` the view does not offer, in ``VIEW_OFFERS`` order. Override to say more."""
        for need, (offered, why) in VIEW_OFFERS.items():
            if need in self.needs() and not offered(view):
                return why
        return ""

    def _reconstruct(self, view: AttackerView) -> Reconstruction:
        """The attack itself, on a view that offers everything ``requires`` names."""
        raise NotImplementedError


RECONSTRUCTION_METRICS: Mapping[str, bool] = {
    "rouge1": True, "rouge2": True, "rougeL": True, "token_recall": True, "token_precision": True, "exact_match": True,
    "token_set_recall": True,
}
# ``mia_auc``/``tpr_at_*`` are the attack's primary score (chosen in its params before any run, never the
# best in hindsight); ``*_lo``/``*_hi`` bound a stratified bootstrap 95% interval; per-score columns
# ``mia_<score>_auc`` etc. sit beside them in the row.
MEMBERSHIP_METRICS: Mapping[str, bool] = {"mia_auc": True, "tpr_at_1fpr": True, "tpr_at_5fpr": True}
