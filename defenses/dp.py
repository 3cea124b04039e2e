"""Client-level differential privacy on the LoRA update (FlexLoRA-DP, SHE-LoRA's DP baseline), as a
wrapper over any defense.

Each client clips the change of its LoRA factors to an L2 ball of radius C, taken over every factor of
every module jointly, and adds N(0, sigma^2 C^2) to each coordinate; the inner defense then proposes
and protects ``prev + noisy clipped delta`` as if it were the client's update. Over ``plain_lora``
(``dp`` alone) the server learns exactly the noisy delta (it can replay the client's start) and the
guarantee is that of the Gaussian mechanism on the delta; over an encrypting defense the server
learns less, never more. Everything the inner defense derives from the update (SHE-LoRA's top-k
lists and exponent bounds included) is computed on the noisy update, so it is post-processing.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch

from benchmark.contract import (
    ClientUpdate,
    Defense,
    FederationInfo,
    LoRAFactors,
    WirePayload,
    Wrapper,
    WrapperClient,
    WrapperServer,
)
from defenses.dp_distributed import NoiseShare, range_problem, share_std

ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True)
class ClientLevelDPParams:
    """Clip norm, noise and accounting of client-level DP."""

    clip: float = field(default=1.0, metadata={
        "help": "C: L2 bound on one client's whole LoRA update (all modules, A and B jointly); > 0"})
    sigma: float = field(default=1.0, metadata={
        "help": "noise multiplier: per-coordinate noise std is sigma * clip; >= 0 (ignored if target_epsilon > 0)"})
    target_epsilon: float = field(default=0.0, metadata={
        "help": "> 0: ignore sigma and solve it by bisection to spend this epsilon over the rounds; 0: use sigma"})
    delta: float = field(default=1e-5, metadata={"help": "the delta of (epsilon, delta)-DP; in (0, 1)"})
    accountant: str = field(default="rdp", metadata={"help": "opacus privacy accountant: rdp | prv"})
    amplification: bool = field(default=True, metadata={
        "help": "true: account with q = clients_per_round / n_clients (amplification by client sampling, which "
                "holds for the released aggregate); false: q = 1, the bound against a server that knows whom "
                "it sampled and sees each client's noisy update"})

    def __post_init__(self) -> None:
        _check_positive("dp.clip", self.clip)
        if not (self.sigma >= 0 and math.isfinite(self.sigma)):
            raise ValueError(f"dp.sigma must be >= 0 and finite, got {self.sigma}")
        if not (self.target_epsilon >= 0 and math.isfinite(self.target_epsilon)):
            raise ValueError(f"dp.target_epsilon must be >= 0 (0 = use sigma), got {self.target_epsilon}")
        check_delta("dp.delta", self.delta)
        check_accountant("dp.accountant", self.accountant)


def _check_positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be > 0 and finite, got {value}")


def check_delta(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{name} must be in (0, 1), got {value}")


def check_accountant(name: str, value: str) -> None:
    if value not in ACCOUNTANTS:
        raise ValueError(f"{name} must be one of {', '.join(ACCOUNTANTS)}, got {value!r}")


def stream(seed: int, *names: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator for the named stream: reproducible and independent of the call order."""
    key = hashlib.sha256("/".join(str(n) for n in names).encode()).digest()[:8]
    words = np.frombuffer(key, dtype=np.uint32).tolist()
    state = np.random.SeedSequence([int(seed) % 2**63, *words]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state.view(np.uint64)[0] >> 1))


def epsilon_for(sigma: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """Epsilon that ``steps`` compositions of the sampled Gaussian mechanism spend (inf without noise)."""
    if steps <= 0:
        return 0.0
    if sigma <= 0:
        return math.inf
    acc = make_accountant(accountant)
    acc.history = [(float(sigma), float(sample_rate), int(steps))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RDP's "optimal order is the largest alpha", PRV's overflow notes
        return float(acc.get_epsilon(delta=delta))


def make_accountant(accountant: str) -> Any:
    from opacus.accountants import PRVAccountant, RDPAccountant

    return RDPAccountant() if accountant == "rdp" else PRVAccountant()


def solve_sigma(target_epsilon: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """Smallest sigma (to 0.1%) whose epsilon stays within ``target_epsilon``; epsilon falls as sigma grows."""
    lo, hi = 0.0, 1.0
    while epsilon_for(hi, sample_rate, steps, delta, accountant) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ValueError(f"no sigma reaches epsilon {target_epsilon} (q={sample_rate}, steps={steps})")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        if epsilon_for(mid, sample_rate, steps, delta, accountant) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def clip_and_noise(
    delta: Mapping[str, LoRAFactors], clip: float, sigma: float, gen: torch.Generator
) -> tuple[dict[str, LoRAFactors], float]:
    """Scale ``delta`` into the L2 ball of radius ``clip`` (all factors jointly), add N(0, (sigma clip)^2).

    Returns the noisy delta and the pre-clip norm (client-side diagnostics only; never uploaded).
    """
    names = sorted(delta)
    sq = sum(float(delta[n].A.double().pow(2).sum() + delta[n].B.double().pow(2).sum()) for n in names)
    norm = math.sqrt(sq)
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    std = sigma * clip
    out: dict[str, LoRAFactors] = {}
    for n in names:
        f = delta[n]
        A = f.A.detach() * factor + std * _randn(f.A, gen)
        B = f.B.detach() * factor + std * _randn(f.B, gen)
        out[n] = LoRAFactors(A, B, f.scale)
    return out, norm


def _randn(like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=gen, dtype=like.dtype).to(like.device)


def update_delta(update: ClientUpdate) -> dict[str, LoRAFactors]:
    """What the client privatizes: factors minus the factors it started from (a gradient probe as is)."""
    if update.kind == "grad" or update.prev is None:
        return dict(update.factors)
    out = {}
    for n, f in update.factors.items():
        p = update.prev[n]
        out[n] = LoRAFactors(f.A.detach() - p.A.detach(), f.B.detach() - p.B.detach(), f.scale)
    return out


def resolve_sigma(params: ClientLevelDPParams, fed: FederationInfo) -> tuple[float, float, float]:
    """(sigma, sample rate, epsilon) from public parameters: both roles compute the same numbers."""
    q = min(1.0, fed.sample_rate) if params.amplification else 1.0
    sigma = params.sigma
    if params.target_epsilon > 0:
        sigma = solve_sigma(params.target_epsilon, q, fed.rounds, params.delta, params.accountant)
    return sigma, q, epsilon_for(sigma, q, fed.rounds, params.delta, params.accountant)


class DPClient(WrapperClient):
    """Clips its delta from the start to norm C and adds N(0, (sigma C)^2); the inner defense gets
    start + noisy delta (a gradient probe: the noisy gradient). Over a defense whose server sees only
    the sum (``privatize_sum``), the inner defense gets the update as is and each client adds only
    its share of the noise inside it (``defenses.dp_distributed``)."""

    def setup(self, fed: FederationInfo) -> WirePayload | None:
        self.sigma = resolve_sigma(self.params, fed)[0]
        self.share = NoiseShare(self.params.clip, self.sigma)
        self.min_summands: int | None = None
        self.distributed = self.inner.privatize_sum(self._noise_share)
        return super().setup(fed)

    def _noise_share(self, update: ClientUpdate, vectors: list[Any], weight: float, min_summands: int) -> list[Any]:
        self.min_summands = min(min_summands, self.min_summands or min_summands)
        gen = stream(self.fed.seed if self.fed else 0, "dp", update.client.client_id, update.round, update.kind)
        return self.share.apply(update, vectors, weight, min_summands, gen)

    def privacy_params(self) -> dict[str, Any]:
        if not self.distributed:
            return self.inner.privacy_params()
        shares = {"sigma_share": share_std(1.0, self.sigma, self.min_summands), "min_summands": self.min_summands} \
            if self.min_summands else {}
        return {**self.inner.privacy_params(), "level": "distributed", **shares}

    def transform(self, update: ClientUpdate) -> ClientUpdate:
        if self.distributed:
            return update
        seed = self.fed.seed if self.fed else 0
        gen = stream(seed, "dp", update.client.client_id, update.round, update.kind)
        noisy, _ = clip_and_noise(update_delta(update), self.params.clip, self.sigma, gen)
        if update.kind != "grad" and update.prev is not None:
            noisy = {
                n: LoRAFactors(update.prev[n].A.detach() + f.A, update.prev[n].B.detach() + f.B, f.scale)
                for n, f in noisy.items()
            }
        return replace(update, factors=noisy)


class DPServer(WrapperServer):
    """The inner server role on the noisy uploads; reports the epsilon every client's release spends."""

    name: ClassVar[str] = "dp"

    def setup(self, fed: FederationInfo, hello: Sequence[WirePayload]) -> None:
        super().setup(fed, hello)
        self.sigma, self.q, self.epsilon = resolve_sigma(self.params, fed)

    def privacy_params(self) -> dict[str, Any]:
        p = self.params
        return {
            **self.inner.privacy_params(),
            "epsilon": self.epsilon, "sigma": self.sigma, "clip": p.clip, "delta": p.delta, "accountant": p.accountant,
            "sample_rate": self.q, "steps": self.fed.rounds if self.fed else None, "level": "client",
        }


DP_COLUMNS = {"epsilon": "epsilon", "sigma": "dp_sigma", "clip": "dp_clip", "delta": "dp_delta"}


class ClientLevelDP(Wrapper):
    """FlexLoRA-DP: each client clips its LoRA delta to norm C and adds Gaussian noise sigma*C; any
    defense may sit inside (``dp+she_lora``), ``dp`` alone is ``dp+plain_lora``.

    Upload: the inner defense's protection of ``prev + noisy delta`` (a gradient probe uploads the
    noisy gradient). Epsilon is that of ``rounds`` compositions of the sampled Gaussian mechanism with
    q = clients_per_round / n_clients (``amplification=False``: q = 1), from opacus' RDP or PRV
    accountant. Noise streams derive from the federation seed, the client, the round and the update kind.

    Over a defense whose server sees only the round's sum (``dp+secagg``) this is distributed DP:
    the clip applies to the client's dense change in the summed space and each client adds only
    sigma*C/sqrt(m) there, m the fewest uploads a released sum holds, so the sum carries at least
    sigma*C; same accountant and sigma, but the guarantee is on the sum, not on each upload (rows:
    ``level = distributed``). Why and how the two differ: ``defenses.dp_distributed``.
    """

    name: ClassVar[str] = "dp"
    version: ClassVar[str] = "2"
    Params = ClientLevelDPParams
    Client = DPClient
    Server = DPServer
    family: ClassVar[str] = "dp"
    columns: ClassVar[Mapping[str, str]] = DP_COLUMNS

    @classmethod
    def paper_method(cls, inner: str | None) -> str | None:
        return f"{inner}-DP" if inner else None

    @classmethod
    def check_inner(cls, params: ClientLevelDPParams, inner: Defense, fed: FederationInfo) -> str | None:
        """Over a defense that sums in secret, its entry range must hold a clipped change plus a noise share."""
        secret = inner.secret_sum(fed.clients_per_round)
        if secret is None:
            return None
        return range_problem(params.clip, resolve_sigma(params, fed)[0], secret)

    @classmethod
    def check(cls, params: ClientLevelDPParams, fed: FederationInfo) -> str | None:
        """A ``target_epsilon`` must be reachable with these rounds and sample rate: tried at noise
        multiplier 100 (a fast yes for most targets), then at 1e6, the largest ``solve_sigma`` tries
        (running the solver itself on an unreachable target takes ~30 s)."""
        if params.target_epsilon <= 0:
            return None
        if resolve_sigma(replace(params, target_epsilon=0.0, sigma=100.0), fed)[2] <= params.target_epsilon:
            return None
        _, q, floor = resolve_sigma(replace(params, target_epsilon=0.0, sigma=1e6), fed)
        if floor <= params.target_epsilon:
            return None
        return (f"target_epsilon={params.target_epsilon:g} is out of reach: with rounds={fed.rounds}, sample rate "
                f"{q:g}, delta={params.delta:g} and the {params.accountant} accountant even noise multiplier 1e6 "
                f"gives epsilon {floor:.4g}; use target_epsilon > {floor:.4g} or a larger delta")

