"""Observed LoRA subspaces and span distances, restricted to what the attacker can trust.

For a LoRA module with inputs X, dL/dA = s B^T G^T X has rows in span(X), and dL/dB = s G^T X A^T has
rows in span{A x}. A single-step gradient or a multi-step SGD delta of the first layer keeps this
structure (the first layer's inputs are frozen), so a token whose layer input lies in the observed row
space was in the batch. This module turns one ``ObservedModule`` into a ``Span`` (an orthonormal basis
of that row space over the coordinates the attacker may use) and measures distances to it.

Naive mode uses every coordinate as shown (hidden ones are zeros, columns in observed order). Adaptive
mode keeps only fully visible columns, maps them to their input features when the defense leaks the
column order, and, when a secret permutation scrambles columns, drops the worst-fitting coordinates of
each candidate (a trimmed least-squares fit), since a few misplaced coordinates are outliers.

How a span is read is set by ``SpanRules``: the signal rules (DAGER's default) choose between the A
and B paths by where the signal is and count the rank above an estimated noise edge; the strict
rules are the first version's (A path whenever it is non-zero, rank at the largest spectral gap).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from benchmark.contract import AttackerView, LoRAFactors, ObservedModule

_SHORTLIST = 1024  # candidates refit with trimming after a plain vocabulary-wide pass


@dataclass(frozen=True)
class Span:
    """The row space of one observed matrix over its trusted coordinates.

    ``index`` maps each kept coordinate to an entry of the candidate feature vector: an input feature
    (A path) or a LoRA rank coordinate (B path, where candidates are first projected by ``proj``, the
    A factor the client started from).
    """

    name: str
    path: str  # "A" or "B"
    basis: Tensor  # (c, k) orthonormal, float64
    rank: int
    saturated: bool
    index: Tensor  # (c,) long
    proj: Tensor | None = None  # (r, n_in) for the B path
    trim: int = 0
    matrix: Tensor | None = None  # the observed rows over ``index``'s coordinates, for refits
    rules: SpanRules | None = None  # how it was read, so that refits read it the same way
    noise: float = 0.0  # estimated noise edge over the largest singular value (0: none measured)
    member_error: float = 0.0  # Wedin bound on a member's distance: edge / (s_rank - edge)

    @property
    def vacuous(self) -> bool:
        """The span fills the trusted coordinates: every candidate would pass."""
        return self.rank >= self.basis.shape[0] - 1

    @property
    def noisy(self) -> bool:
        """Noise, not float rounding, perturbs the span: members sit at distances of the order of
        ``member_error``, so exact thresholds would drop them (see ``SpanRules.noisy_above``)."""
        return self.rules is not None and self.noise > self.rules.noisy_above

    @property
    def separation(self) -> float:
        """How clearly members stand apart from non-members: the distance of a random direction
        from the span, sqrt(1 - rank / coordinates), over the bound on a member's distance."""
        if self.rank == 0 or self.vacuous:
            return 0.0
        outside = math.sqrt(max(0.0, 1.0 - self.rank / max(1, self.basis.shape[0])))
        return outside / max(self.member_error, 1e-12)

    def features(self, X: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
        F = X.to(dtype)
        if self.proj is not None:
            F = F @ self.proj.to(dtype).T
        return F[:, self.index]

    def distance(self, X: Tensor, chunk: int = 8192) -> Tensor:
        """Relative distance of each row of ``X`` (module inputs, original feature order) to the span.

        Computed in float32 from the explicit residual (accurate to ~1e-6, far below any threshold),
        which halves the cost of the vocabulary-wide pass."""
        R = self.basis.float()
        out = [_plain_distance(self.features(X[i : i + chunk], torch.float32), R) for i in range(0, X.shape[0], chunk)]
        d = torch.cat(out).double() if out else torch.zeros(0, dtype=torch.float64)
        if self.trim > 0 and d.numel():
            short = torch.topk(d, min(_SHORTLIST, d.numel()), largest=False).indices
            d[short] = _trimmed_distance(self.features(X[short]), self.basis, self.trim)
        return d


def _plain_distance(F: Tensor, R: Tensor) -> Tensor:
    norms = F.norm(dim=1, keepdim=True)
    Fn = F / norms.clamp_min(1e-30)
    d = (Fn - (Fn @ R) @ R.T).norm(dim=1)
    return torch.where(norms.squeeze(1) > 1e-12, d, torch.ones_like(d))  # a zero input (padding) is never a member


def _trimmed_distance(F: Tensor, R: Tensor, trim: int, iters: int = 5, chunk: int = 256) -> Tensor:
    """Residual after refitting each row on all but its ``trim`` worst coordinates.

    Rows are refit in chunks through ``_trimmed_refit`` (a solve of size min(trim, k) per row, not a
    k x k system assembled from a (rows, c, k) product). A zero row (padding) is never a member
    (distance 1, as in ``_plain_distance``). Raises ``ValueError`` on input no fit can use: non-finite
    values, or a trim that leaves no more coordinates than the span has directions."""
    _check_trim(F, R, trim)
    out = []
    for i in range(0, F.shape[0], chunk):
        Fn, norms = _unit_rows(F[i : i + chunk].to(R.dtype))
        res, mask = _trimmed_refit(Fn, R, trim, iters)
        kept = (Fn * mask).norm(dim=1)
        d = (res * mask).norm(dim=1) / kept.clamp_min(1e-30)
        out.append(torch.where((norms > 1e-12) & (kept > 1e-12), d, torch.ones_like(d)))
    return torch.cat(out) if out else torch.zeros(0, dtype=R.dtype)


def _check_trim(F: Tensor, R: Tensor, trim: int) -> None:
    """The trimmed fit's preconditions, as one-line errors instead of a LAPACK failure downstream."""
    c, k = R.shape
    if F.dim() != 2 or F.shape[1] != c:
        raise ValueError(f"trimmed distance: candidates of shape {tuple(F.shape)} do not match a basis over {c} coordinates")
    if not (0 < trim < c - k):
        raise ValueError(f"trimmed distance: trim {trim} must lie in (0, {c - k}): the {c} coordinates less the trimmed "
                         f"ones must outnumber the span's rank {k}")
    if not bool(torch.isfinite(R).all()):
        raise ValueError("trimmed distance: the span basis has non-finite entries")
    if not bool(torch.isfinite(F).all()):
        raise ValueError(f"trimmed distance: {int((~torch.isfinite(F)).any(1).sum())} candidate rows have non-finite entries")


def _unit_rows(F: Tensor) -> tuple[Tensor, Tensor]:
    norms = F.norm(dim=1)
    return F / norms.clamp_min(1e-30).unsqueeze(1), norms


def _trimmed_refit(Fn: Tensor, R: Tensor, trim: int, iters: int, ridge: float = 1e-10) -> tuple[Tensor, Tensor]:
    """Each row's residual (all coordinates) after ``iters`` rounds of: mark its ``trim`` largest
    residual coordinates, refit its coefficients on the others. Returns the last residual and the
    last mask (1 on kept coordinates).

    With R orthonormal and W = R[worst] (trim x k) per row, the kept coordinates' normal matrix is
    I_k - W^T W. When trim < k the fit goes through the trim x trim system instead: with r the plain
    residual, y = (I_t - W W^T)^{-1} r[worst] and the refit residual is r + R W^T y (Woodbury). Either
    way the work per row is min(trim, k)^2 * max(trim, k), not c * k^2. The batched solves run on one
    thread: MKL's batched LU fails with several threads from k ~ 150 ("Parameter 6 was incorrect on
    entry to DLASWP", pytorch issue 142815)."""
    k = R.shape[1]
    r = Fn - (Fn @ R) @ R.T
    res = r
    mask = torch.ones_like(Fn)
    for _ in range(iters):
        worst = torch.topk(res.abs(), trim, dim=1).indices
        mask = torch.ones_like(Fn).scatter_(1, worst, 0.0)
        W = R[worst]  # (n, t, k)
        with single_thread():
            if trim < k:
                eye = torch.eye(trim, dtype=R.dtype)
                y = torch.linalg.solve(eye - W @ W.transpose(1, 2) + ridge * eye, r.gather(1, worst).unsqueeze(-1))
                res = r + (W.transpose(1, 2) @ y).squeeze(-1) @ R.T
            else:
                eye = torch.eye(k, dtype=R.dtype)
                rhs = Fn @ R - (W.transpose(1, 2) @ Fn.gather(1, worst).unsqueeze(-1)).squeeze(-1)
                coef = torch.linalg.solve(eye - W.transpose(1, 2) @ W + ridge * eye, rhs.unsqueeze(-1)).squeeze(-1)
                res = Fn - coef @ R.T
    return res, mask


@dataclass(frozen=True)
class SpanRules:
    """How a span is read from an observed update.

    ``signal_path``: choose the A or B path by where the signal is (``choose_path``); off, the A path
    is taken whenever its matrix is non-zero (the first version, which DP noise on a round-1 dL/dA
    turns into a read of pure noise). ``noise_rank``: count singular values above an estimated noise
    edge (``noise_rank``); off, the rank sits at the largest spectral gap (``estimate_rank``), which
    noise erases, leaving every direction counted ("saturated"). ``noisy_above``: a span whose noise
    edge exceeds this fraction of its largest singular value counts as noisy (float32 rounding sits
    near 1e-7, DP noise decades higher). ``clean_error``: a path whose member-distance bound is below
    this is exact enough to be kept without comparing it with the other path."""

    signal_path: bool = True
    noise_rank: bool = True
    noisy_above: float = 1e-4
    clean_error: float = 1e-2


STRICT_RULES = SpanRules(signal_path=False, noise_rank=False)


@dataclass(frozen=True)
class RankEstimate:
    """A rank read from singular values: ``edge`` is the estimated top of the noise bulk (absolute)."""

    rank: int
    saturated: bool
    edge: float = 0.0
    top: float = 0.0  # the largest singular value

    @property
    def noise(self) -> float:
        return self.edge / self.top if self.top > 0 else 0.0

    def member_error(self, s: Tensor) -> float:
        """Wedin's sin-theta bound for the weakest kept direction: a member's distance from the
        estimated span is at most about edge / (s_rank - edge)."""
        if self.rank == 0 or self.edge <= 0:
            return 0.0
        gap = float(s[self.rank - 1]) - self.edge
        return self.edge / gap if gap > 0 else math.inf


def mp_singular_values(p: int, q: int, grid: int = 4096) -> Tensor:
    """Expected singular values, descending, of a ``p`` x ``q`` matrix of unit-variance iid noise:
    sqrt(max(p, q)) times the square roots of the Marchenko-Pastur quantiles at (i - 1/2) / min(p, q).
    The density is integrated on a cosine grid, which resolves both edges (and the 1/sqrt(x) pole of
    a square matrix) without special cases."""
    p, q = min(p, q), max(p, q)
    if p == 0:
        return torch.zeros(0, dtype=torch.float64)
    beta = p / q
    a, b = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    theta = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid * math.pi
    x = a + (b - a) * (1 - torch.cos(theta)) / 2
    half = (b - a) / 2 * torch.sin(theta)  # sqrt((b - x)(x - a)), and also dx / dtheta
    mass = half * half / (2 * math.pi * beta * x) * (math.pi / grid)
    cdf = torch.cumsum(mass, 0)
    cdf = cdf / cdf[-1]
    levels = 1 - (torch.arange(p, dtype=torch.float64) + 0.5) / p
    idx = torch.searchsorted(cdf, levels).clamp_max(grid - 1)
    return math.sqrt(q) * torch.sqrt(x[idx])


def noise_rank(s: Tensor, n_cols: int, rank_tol: float = 1e-7, margin: float = 0.1, iters: int = 20,
               min_tail: int = 6, max_spread: float = 2.5, min_gap: float = 20.0,
               rounding: float = 1e-4) -> RankEstimate:
    """Rank of ``s`` (descending singular values of a matrix with ``n_cols`` columns) as the count
    above the top of an estimated noise bulk, so that additive noise is not counted as signal.

    With k strong directions removed, the rest of a signal-plus-iid-noise matrix behaves like a
    (p - k) x (q - k) noise matrix, whose singular values follow the Marchenko-Pastur law. The noise
    level is the median ratio of the middle half of the tail to that law's quantiles (robust to a few
    weak signal directions left in the tail), the edge is sigma (sqrt(p - k) + sqrt(q - k)) plus a
    ``margin`` for the largest noise value's fluctuation, and k is refit until it settles. Values
    under ``rank_tol`` x the largest never count (float rounding without noise).

    A tail that does not look like noise (fewer than ``min_tail`` values in its middle half, or
    ratios to the law spread over more than ``max_spread``, as a signal decaying over decades does)
    is not read as noise: the rank is then ``estimate_rank``'s and no noise is reported, so a clean
    but saturated span is not mistaken for a noisy one.

    A drop of ``min_gap`` or more between two values above the edge, onto values under ``rounding``
    x the largest (float rounding, not noise: ``SpanRules.noisy_above``), ends the signal there (the
    largest such drop, as ``estimate_rank``): float32 rounding of observed weights minus their exact
    start (an SGD step's difference) is no iid bulk, so the law fitted to its tail sets the edge too
    low and counts rounding directions (SmolLM2's round-2 v_proj: 29 signal values over four decades,
    then a drop of 190 to 400 onto a slowly decaying tail near 1e-6 that the law counts 60 deep). The
    edge is then the largest value below the drop. A noisy span's drops lie above ``rounding``."""
    if s.numel() == 0 or float(s[0]) == 0.0:
        return RankEstimate(0, False)
    top = float(s[0])
    legacy = RankEstimate(*estimate_rank(s, rank_tol), top=top)
    s = s[s > 1e-13 * s[0]].double()  # structural zeros (e.g. a narrow output dimension), not noise
    p = int(s.numel())
    q = max(int(n_cols), p)
    k, seen = 0, set()
    for _ in range(iters):
        lo, hi = (p - k) // 4, 3 * (p - k) // 4
        if hi - lo < min_tail:
            return legacy
        ratios = s[k:][lo:hi] / mp_singular_values(p - k, q - k)[lo:hi].clamp_min(1e-30)
        sigma = float(torch.median(ratios))
        edge = max(rank_tol * top, sigma * (math.sqrt(p - k) + math.sqrt(q - k)) * (1 + margin))
        new = int((s > edge).sum())
        if new == k or new in seen:
            if float(ratios.max() / ratios.min().clamp_min(1e-300)) > max_spread:
                return legacy
            cut = _rounding_gap(s, new, min_gap, rounding)
            if cut:
                return RankEstimate(cut, False, float(s[cut]), top)
            return RankEstimate(new, False, edge, top)
        seen.add(k)
        k = new
    return legacy


def _rounding_gap(s: Tensor, above: int, min_gap: float, rounding: float) -> int:
    """The count of values before the largest drop among the first ``above`` values (all above the
    noise edge), if that drop is ``min_gap`` or more and lands under ``rounding`` x the largest
    value; 0 otherwise."""
    if above < 2:
        return 0
    head = s[:above].clamp_min(1e-300)
    ratios = head[:-1] / head[1:]
    i = int(torch.argmax(ratios))
    return i + 1 if float(ratios[i]) >= min_gap and float(head[i + 1] / head[0]) <= rounding else 0


def estimate_rank(s: Tensor, rank_tol: float = 1e-7, gap: float = 20.0) -> tuple[int, bool]:
    """Numerical rank of singular values ``s`` (descending) and whether it is saturated (full).

    The rank sits at the largest drop between consecutive singular values when that drop exceeds
    ``gap``: a gradient's signal can span five decades (positions with tiny attention weights), so a
    fixed relative cut misses real directions, while the float32 noise floor lies decades lower.
    Without such a drop, values above ``rank_tol * s[0]`` count and a full count means saturated.
    """
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0, False
    s = s[s > 1e-13 * s[0]]  # structural zeros (e.g. a narrow output dimension), not noise
    full = int(s.numel())
    if full > 1:
        ratios = s[:-1] / s[1:]
        i = int(torch.argmax(ratios))
        if float(ratios[i]) > gap:
            return i + 1, False
    k = int((s > rank_tol * s[0]).sum())
    return k, k == full


def fit_span(
    name: str,
    M: Tensor,
    keep: Tensor,
    index: Tensor,
    rank_tol: float,
    proj: Tensor | None = None,
    trim: int = 0,
    dim: int | None = None,
    path: str = "A",
    rules: SpanRules = STRICT_RULES,
) -> Span | None:
    """Span of the rows of ``M[:, keep]``; ``dim`` forces the number of directions (soft ranking)."""
    sub = M[:, keep].double()
    if sub.numel() == 0 or not torch.isfinite(sub).all() or float(sub.abs().max()) == 0.0:
        return None
    s, vh = right_svd(sub)
    if rules.noise_rank:
        est = noise_rank(s, sub.shape[1], rank_tol, rounding=rules.noisy_above)
    else:
        est = RankEstimate(*estimate_rank(s, rank_tol), top=float(s[0]))
    k = est.rank if dim is None else max(1, min(dim, int(s.numel())))
    if k == 0:
        return None
    trim = min(trim, max(0, sub.shape[1] - k - 1))
    return Span(name, path, vh[:k].T.contiguous(), est.rank, est.saturated, index, proj, trim, sub, rules,
                est.noise, est.member_error(s))


def right_svd(M: Tensor) -> tuple[Tensor, Tensor]:
    """Singular values and right singular vectors (rows of Vh) of a wide matrix via QR of its
    transpose: LAPACK's multi-threaded SVD of a wide matrix is pathologically slow on busy cores."""
    with single_thread():
        if M.shape[0] < M.shape[1]:
            Q, Rt = torch.linalg.qr(M.T)
            _, s, wh = torch.linalg.svd(Rt.T)
            return s, (Q @ wh.T).T
        _, s, vh = torch.linalg.svd(M, full_matrices=False)
        return s, vh


@contextmanager
def single_thread() -> Iterator[None]:
    """Small dense linear algebra runs faster on one thread than on oversubscribed ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def refine(span: Span, members: Tensor, rank_tol: float) -> Span:
    """Drop the coordinates a secret column permutation displaced, using known or confidently found
    members of the span: every member's trimmed fit flags its worst coordinates, and coordinates
    flagged by most members are misplaced for all of them (the permutation is shared). The span is
    then refit without those coordinates and needs no per-candidate trimming."""
    if span.trim == 0 or span.matrix is None or members.shape[0] == 0:
        return span
    Fn = span.features(members)
    _check_trim(Fn, span.basis, span.trim)
    Fn = _unit_rows(Fn)[0]
    res = torch.cat([_trimmed_refit(Fn[i : i + 256], span.basis, span.trim, 2)[0] for i in range(0, Fn.shape[0], 256)])
    flagged = torch.zeros(Fn.shape[1], dtype=torch.float64)
    for row in res.abs():
        top = torch.topk(row, span.trim).indices
        big = top[row[top] > 10 * row.median().clamp_min(1e-12)]
        flagged[big] += 1
    bad = flagged > 0.5 * Fn.shape[0]
    if not bad.any():
        return span
    good = torch.nonzero(~bad).flatten()
    new = fit_span(span.name, span.matrix, good, span.index[good], rank_tol, proj=span.proj, path=span.path,
                   rules=span.rules or STRICT_RULES)
    return new if new is not None else span


def _prev(view: AttackerView, name: str) -> LoRAFactors | None:
    return view.prev.get(name) if view.prev else None


def _observed(view: AttackerView, name: str, om: ObservedModule, factor: str, adaptive: bool) -> tuple[Tensor, Tensor | None] | None:
    """The matrix whose rows carry the span (a gradient, or observed minus starting factors)."""
    M = om.A if factor == "A" else om.B
    hidden = om.A_hidden if factor == "A" else om.B_hidden
    if M is None:
        return None
    M = M.detach().double().cpu()
    if view.kind != "grad":
        prev = _prev(view, name)
        if prev is None:
            return None
        P = (prev.A if factor == "A" else prev.B).detach().double().cpu()
        if factor == "A" and adaptive and om.column_order is not None:
            P = P[:, list(om.column_order)]
        if P.shape != M.shape:
            return None
        M = M - P
    if hidden is not None:
        hidden = hidden.bool().cpu()
        if adaptive:
            M = M.masked_fill(hidden, 0.0)
    return M, hidden


def a_path_span(
    view: AttackerView,
    name: str,
    om: ObservedModule,
    adaptive: bool,
    rank_tol: float = 1e-7,
    dim: int | None = None,
    trim_fraction: float = 0.1,
    dropout: float = 0.0,
    rules: SpanRules = STRICT_RULES,
) -> Span | None:
    """The span of dL/dA (or of the A update): rows in span(X), candidates in input coordinates.

    ``dropout``: the rate at which the client's training zeroed this module's input coordinates (BERT's
    embedding dropout); each candidate then drops its worst ~2p of coordinates before being judged,
    since a true token matches its masked copy everywhere else.

    Adaptive, with a start known only as an estimate whose space the transcript bounds: the start is
    projected away instead of subtracted (``attacks.toolkit.projection``)."""
    if adaptive and view.start_known == "estimate" and view.start_space is not None:
        from attacks.toolkit import projection  # noqa: PLC0415 (projection builds its spans on this module)

        if projection.uses_projection(view, name):
            return projection.projected_span(view, name, om, rank_tol, dim, dropout, rules=rules)
    got = _observed(view, name, om, "A", adaptive)
    if got is None:
        return None
    M, hidden = got
    keep = torch.arange(M.shape[1])
    index = keep
    trim = 0
    if adaptive:
        if hidden is not None:
            keep = torch.nonzero(~hidden.any(0)).flatten()
        if om.column_order is not None:
            index = torch.tensor(om.column_order, dtype=torch.long)[keep]
        else:
            index = keep
            if om.columns_permuted:
                n_hidden = M.shape[1] - keep.numel()
                trim = n_hidden if n_hidden > 0 else max(1, int(trim_fraction * keep.numel()))
    else:
        index = keep
    if dropout > 0:
        trim = max(trim, math.ceil(2 * dropout * keep.numel()))
    return fit_span(name, M, keep, index, rank_tol, trim=trim, dim=dim, path="A", rules=rules)


def b_path_span(
    view: AttackerView,
    name: str,
    om: ObservedModule,
    adaptive: bool,
    rank_tol: float = 1e-7,
    dim: int | None = None,
    rules: SpanRules = STRICT_RULES,
) -> Span | None:
    """The span of dL/dB (or of the B update): rows in span{A0 x}, so candidates are projected
    through the starting A the server holds (``view.prev``) before they are judged."""
    got = _observed(view, name, om, "B", adaptive)
    prev = _prev(view, name)
    if got is None or prev is None:
        return None
    M, hidden = got
    keep = torch.arange(M.shape[1])
    if adaptive and hidden is not None:
        keep = torch.nonzero(~hidden.any(0)).flatten()
    proj = prev.A.detach().double().cpu()
    return fit_span(name, M, keep, keep, rank_tol, proj=proj, dim=dim, path="B", rules=rules)


def signal_only_on_b(view: AttackerView, name: str) -> bool:
    """dL/dA = s B^T G^T X carries nothing when the client's B is exactly zero (peft's round-1 init)
    and the observation is one gradient or one step from that start: whatever the A matrix shows
    then is noise, and the whole signal is on the dL/dB path through the known A0."""
    prev = _prev(view, name)
    if prev is None or not view.prev_exact or float(prev.B.abs().max()) != 0.0:
        return False
    return view.kind == "grad" or view.local_steps <= 1


def choose_path(a: Span | None, b: Span | None, rules: SpanRules, start_exact: bool = True) -> Span | None:
    """The path whose span separates members from non-members more clearly.

    A member's distance from an estimated span is bounded by Wedin's sin-theta theorem, roughly
    noise edge / (weakest kept singular value - edge) (``Span.member_error``), while a non-member's
    is about sqrt(1 - rank / coordinates), the distance of a random direction: their ratio
    (``Span.separation``) is what the threshold has to cut, so the path with the larger ratio is
    used. It needs no model pass (known members or a vocabulary pass would be costlier, and the
    template's known tokens are too few to rank two spans reliably). A clean A path (bound under
    ``rules.clean_error``) is kept as the first version did: it is exact after any number of SGD
    steps, where the B path is only approximately in span{A0 x}. Where the server holds only an
    estimate of A0 (``start_exact`` false), candidates reach the B path through that estimate's
    error, which the spectrum cannot show: a usable A path is then kept."""
    if a is None or b is None:
        return a if b is None else b
    if _clean(a, rules) or (not start_exact and a.rank > 0 and not a.vacuous):
        return a
    return a if a.separation >= b.separation else b


def _clean(span: Span, rules: SpanRules) -> bool:
    return span.rank > 0 and not span.vacuous and span.member_error <= rules.clean_error


def module_span(
    view: AttackerView,
    name: str,
    om: ObservedModule,
    adaptive: bool,
    rank_tol: float = 1e-7,
    dim: int | None = None,
    trim_fraction: float = 0.1,
    dropout: float = 0.0,
    rules: SpanRules = STRICT_RULES,
) -> Span | None:
    """The usable span of one observed module.

    Strict rules: the A path when its update is non-zero, else the B path through the starting A
    (round 1 with peft's B = 0 makes dL/dA vanish). Signal rules: the B path outright when the known
    start has B = 0 (``signal_only_on_b``), else both paths fitted and ``choose_path`` picks."""
    if rules.signal_path and signal_only_on_b(view, name):
        return b_path_span(view, name, om, adaptive, rank_tol, dim, rules)
    a = a_path_span(view, name, om, adaptive, rank_tol, dim, trim_fraction, dropout, rules)
    if not rules.signal_path:
        return a if a is not None else b_path_span(view, name, om, adaptive, rank_tol, dim, rules)
    if a is not None and _clean(a, rules):
        return a  # exact already: the B path's SVD would change nothing
    return choose_path(a, b_path_span(view, name, om, adaptive, rank_tol, dim, rules), rules, view.prev_exact)


def min_distance(spans: list[Span], inputs: list[Tensor]) -> Tensor:
    """Per-candidate minimum over modules (a token counts if any module's span contains it)."""
    ds = [sp.distance(x) for sp, x in zip(spans, inputs)]
    return torch.stack(ds).min(0).values


def split_by_gap(d: Tensor, tau: float, max_low: float = 0.1, ratio: float = 20.0, limit: int = 512) -> Tensor:
    """Indices of the clearly-small distances: below ``tau``, or below the largest multiplicative gap
    in the sorted smallest distances when that gap exceeds ``ratio`` and sits under ``max_low``
    (float32 deltas push true distances above a fixed threshold while others stay near 1)."""
    vals, idx = torch.sort(d)
    fixed = idx[vals < tau]
    head = vals[: min(limit, vals.numel())].clamp_min(1e-12)
    if head.numel() > 1:
        ratios = head[1:] / head[:-1]
        ok = head[:-1] < max_low
        if ok.any():
            ratios = torch.where(ok, ratios, torch.zeros_like(ratios))
            i = int(torch.argmax(ratios))
            if float(ratios[i]) > ratio and i + 1 > fixed.numel():
                return idx[: i + 1]
    return fixed
