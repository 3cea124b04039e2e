"""Removing a start the server knows only as a space: project it away instead of subtracting it.

In round >= 2 an upload is A_obs = A_start + dA. Where the server knows A_start only as an estimate
(SHE-LoRA: encrypted columns replayed as zero; MaskCrypt: hidden values as zero), subtracting that
estimate leaves its error in every entry (FlexLoRA's re-factorisation spreads it), and the residual
is full rank. But the transcript says exactly where the start lies (``StartSpace``): every starting
row of A is in span(S) = the broadcast's plaintext row space + the unit vectors of columns whose start
is unknown + the padding rows the server replays. Let N be an orthonormal basis of the complement of
span(S) over the coordinates the attack uses. Then A_obs N = dA N exactly, and one SGD step's rows
stay in span{x_t}, so the rows of dA N span {N^T x_t}: DAGER's span check holds for the projected
update and the projected candidates N^T x. A token that lies mostly inside span(S) keeps little of
itself in the complement and is judged on what is left (a token entirely inside it is never a member).

The check needs room: when the complement is hardly larger than the update's rank, every candidate
passes, and the attack abstains (``Abstain``) instead of reporting a defense win.

A secret column permutation (SHE-LoRA with OPE codes) leaves the start space exact, since the server
computed it in the permuted layout it observes, but misplaces the candidates' coordinates: the
slots of the global list hold unknown columns (``ObservedModule.foreign``: dropped) and up to
``displaced`` other visible slots hold a column from elsewhere. Where the transcript reveals the
order (padding replayed in the original order, ``StartSpace.a_loose``: one SGD step never moves it,
so matching its columns recovers the permutation), the candidates are mapped exactly. Otherwise each
candidate may drop its worst ``displaced`` coordinates: greedily (orthogonal matching pursuit over the
coordinates' images in the complement), on the shortlist of nearest tokens only, as the unprojected
trimmed fit does.

B path: dL/dB = s G^T (X A^T) has rows in span{A x_t}, and left-multiplying B_obs by a complement of
the start's column space keeps that, so the same projection works on B's columns where the transcript
bounds them (MaskCrypt: the relayed B's visible columns plus the rows with hidden entries). Its
candidates still go through the starting A, known here only as the estimate, so that path is as good
as the estimate. SHE-LoRA gives no such bound: its encrypted columns' lifts B a_j are ciphertext, so
the start's column space is unknown, and its B path stays unprojected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from attacks.toolkit.subspace import _SHORTLIST, STRICT_RULES, Span, SpanRules, fit_span, single_thread
from benchmark.contract import Abstain, AttackerView, ObservedModule, StartSpace

MARGIN = 8  # free complement directions a span must leave for a token to be singled out
_TOL = 1e-6  # relative singular value below which a start direction is rounding, not a direction
METHOD_NOTE = ("start: projection (upload and candidates projected onto the complement of the space the "
               "transcript says the start lies in)")


def uses_projection(view: AttackerView, name: str) -> bool:
    """Whether an adaptive span attack projects this module's start away: the start is only an
    estimate, the update is not a bare gradient, and the transcript bounds the start's space."""
    return (view.start_known == "estimate" and view.kind != "grad" and view.start_space is not None
            and name in view.start_space)


def row_basis(rows: Tensor, tol: float = _TOL) -> Tensor:
    """Orthonormal rows (k x n, float64) spanning ``rows``' row space; each row is normalised first,
    so a small generator counts as much as a large one, and directions below ``tol`` are dropped."""
    R = rows.double()
    R = R[R.norm(dim=1) > 0]
    if R.numel() == 0:
        return R.new_zeros(0, rows.shape[1])
    R = R / R.norm(dim=1, keepdim=True)
    with single_thread():
        _, s, vh = torch.linalg.svd(R, full_matrices=False)
    return vh[: int((s > tol * s[0]).sum())]


def complement(rows: Tensor, tol: float = _TOL) -> Tensor:
    """Orthonormal basis (n x c, float64) of the orthogonal complement of ``rows``' row space in R^n."""
    n = rows.shape[1]
    R = rows.double()
    R = R[R.norm(dim=1) > 0]
    if R.numel() == 0:
        return torch.eye(n, dtype=torch.float64)
    R = R / R.norm(dim=1, keepdim=True)
    with single_thread():
        _, s, vh = torch.linalg.svd(R, full_matrices=True)
    k = int((s > tol * s[0]).sum())
    return vh[k:].T.contiguous()


def recover_order(observed: Tensor, replay: Tensor, ratio: float = 0.5) -> tuple[int, ...] | None:
    """Each observed column's original column, from rows the server replays in the original order.

    ``observed`` (l x c): rows as uploaded, in the server's (secret) column order; ``replay`` (l x n):
    the same rows as the server computes them, in the original order. Column p of ``observed`` is
    column c of ``replay`` when it is its unique clear nearest neighbour (nearer than ``ratio`` times
    the runner-up); ``None`` unless every observed column has one and no two share one."""
    if observed.shape[0] == 0 or observed.shape[0] != replay.shape[0] or replay.shape[1] < 2:
        return None
    seen, known = observed.double(), replay.double()
    d = torch.cdist(seen.T, known.T)  # (c, n)
    two = torch.topk(d, 2, dim=1, largest=False)
    best, second = two.values[:, 0], two.values[:, 1]
    scale = seen.norm(dim=0).clamp_min(1e-30)
    clear = (best < ratio * second) & (best < 0.1 * scale)
    order = two.indices[:, 0]
    if not bool(clear.all()) or order.unique().numel() != order.numel():
        return None
    return tuple(int(c) for c in order)


@dataclass(frozen=True)
class Projection:
    """One observed factor with the start projected away.

    ``matrix``: the projected observation (rows in the span the check uses); ``proj``: the map from a
    candidate's input features to its projected features (A path) or to its LoRA rank coordinates
    (B path: the start estimate's A); ``coords``: each usable coordinate's unit vector in the
    projected space (A path, for trimming); ``trim``: coordinates a candidate may drop."""

    factor: str
    matrix: Tensor
    proj: Tensor  # (c, n_in): features -> projected coordinates (A) or rank coordinates (B)
    coords: Tensor | None  # (k, c)
    coord_index: Tensor | None  # (k,): the input feature each usable coordinate reads
    trim: int
    kept: int  # coordinates used before projecting
    note: str


def project_a(view: AttackerView, name: str, om: ObservedModule, dropout: float = 0.0) -> Projection | None:
    """The A path: the upload's rows over the usable columns, times the start space's complement."""
    space: StartSpace = view.start_space[name]
    if om.A is None:
        return None
    M = om.A.detach().double().cpu()
    r, n = M.shape
    hidden = om.A_hidden.bool().cpu().any(0) if om.A_hidden is not None else torch.zeros(n, dtype=torch.bool)
    gens = [space.a_rows.double().cpu()]
    rows = list(range(r))
    order = list(om.column_order) if om.column_order is not None else None
    recovered = False
    if space.a_loose:
        loose = list(space.a_loose)
        found = None
        if om.columns_permuted and order is None and space.a_loose_values is not None:
            vis = torch.nonzero(~hidden).flatten()
            found = recover_order(M[loose][:, vis], space.a_loose_values.cpu())
        if found is not None:  # the padding the server replays names every visible column
            order = list(range(n))
            for p, c in zip(vis.tolist(), found):
                order[p] = c
            recovered = True
            gens.append(space.a_loose_values.double().cpu()[:, order])
        else:  # their start is known only in another order: leave those rows out
            rows = [i for i in rows if i not in set(loose)]
    drop = set(torch.nonzero(hidden).flatten().tolist()) | set(space.a_free)
    if not recovered:
        drop |= set(om.foreign)
    keep = torch.tensor([p for p in range(n) if p not in drop], dtype=torch.long)
    if keep.numel() == 0 or not rows:
        return None
    N = complement(torch.cat(gens, 0)[:, keep])
    index = torch.tensor(order, dtype=torch.long)[keep] if order is not None else keep
    proj = torch.zeros(N.shape[1], n, dtype=torch.float64)
    proj[:, index] = N.T
    trim = 0
    if om.columns_permuted and order is None:
        trim = om.displaced or max(1, int(hidden.sum()))
    if dropout > 0:
        trim = max(trim, math.ceil(2 * dropout * keep.numel()))
    how = "order recovered from replayed padding" if recovered else (f"trimming up to {trim} displaced coordinates"
                                                                      if trim else "")
    note = f"{name}: {N.shape[1]} of {keep.numel()} usable columns outside the start's space" + (f", {how}" if how else "")
    return Projection("A", M[rows][:, keep] @ N, proj, N, index, trim, int(keep.numel()), note)


def project_b(view: AttackerView, name: str, om: ObservedModule) -> Projection | None:
    """The B path, where the transcript bounds the start's column space (else ``None``)."""
    space: StartSpace = view.start_space[name]
    prev = view.prev.get(name) if view.prev else None
    if om.B is None or space.b_cols is None or prev is None:
        return None
    M = om.B.detach().double().cpu()
    m = M.shape[0]
    drop = set(space.b_free)
    if om.B_hidden is not None:
        drop |= set(torch.nonzero(om.B_hidden.bool().cpu().any(1)).flatten().tolist())
    keep = torch.tensor([i for i in range(m) if i not in drop], dtype=torch.long)
    if keep.numel() == 0:
        return None
    N = complement(space.b_cols.double().cpu()[keep].T)
    note = (f"{name}: B projected onto {N.shape[1]} of {keep.numel()} rows outside the start's column space; "
            "candidates through the start estimate's A")
    return Projection("B", N.T @ M[keep], prev.A.detach().double().cpu(), None, None, 0, int(keep.numel()), note)


@dataclass(frozen=True)
class ProjectedSpan(Span):
    """A span in the start space's complement. ``proj`` maps input features to projected features
    (``index`` is the identity over them); ``coords`` are the usable coordinates' images, by which a
    candidate drops its ``drop`` worst (displaced) coordinates. ``trim`` stays 0 and ``matrix``
    ``None``: the generic trimmed fit and refit work in coordinate space, which a projection has
    mixed, so the span attacks' refinement step leaves this span alone."""

    coords: Tensor | None = None
    coord_index: Tensor | None = None
    drop: int = 0
    note: str = ""

    def distance(self, X: Tensor, chunk: int = 8192) -> Tensor:
        R = self.basis.float()
        out = [_relative_residual(self.features(X[i : i + chunk], torch.float32), R) for i in range(0, X.shape[0], chunk)]
        d = torch.cat(out).double() if out else torch.zeros(0, dtype=torch.float64)
        if self.drop > 0 and self.coords is not None and self.coord_index is not None and d.numel():
            short = torch.topk(d, min(_SHORTLIST, d.numel()), largest=False).indices
            raw = X[short].double()[:, self.coord_index.to(X.device)].cpu()
            d[short] = _pursuit_distance(self.features(X[short]).cpu(), raw, self.basis, self.coords, self.drop)
        return d


def _relative_residual(F: Tensor, R: Tensor) -> Tensor:
    norms = F.norm(dim=1, keepdim=True)
    Fn = F / norms.clamp_min(1e-30)
    d = (Fn - (Fn @ R) @ R.T).norm(dim=1)
    return torch.where(norms.squeeze(1) > 1e-12, d, torch.ones_like(d))  # nothing outside the start space: no member


def _pursuit_distance(F: Tensor, raw: Tensor, U: Tensor, coords: Tensor, trim: int) -> Tensor:
    """Residual of each projected candidate after also allowing its ``trim`` best coordinate
    directions (greedy, each refit exactly), relative to what is left of it without them.

    ``coords`` (k x c): coordinate j's unit vector in the projected space; ``raw`` (b x k): the
    candidates' values at those coordinates. A candidate's projected features are
    f = sum_j raw_j coords[j]; a displaced coordinate adds an error along one coords[j],
    so dropping coordinate j means allowing that direction, and the candidate's size is then
    measured without it (a token that is mostly one coordinate cannot pass by dropping it)."""
    norms = F.norm(dim=1, keepdim=True).clamp_min(1e-30)
    Fn = F / norms
    res = Fn - (Fn @ U) @ U.T
    W = coords - (coords @ U) @ U.T  # the coordinates' images outside the update's span
    wn = W.norm(dim=1)
    usable = wn > 1e-9 * wn.max().clamp_min(1e-30)
    Wn = torch.where(usable[:, None], W / wn.clamp_min(1e-30)[:, None], torch.zeros_like(W))
    b, c = Fn.shape
    chosen = torch.zeros(b, W.shape[0], dtype=torch.bool)
    picked = Fn.new_zeros(b, 0, c)
    for _ in range(min(trim, int(usable.sum()))):
        score = (res @ Wn.T).abs().masked_fill(chosen | ~usable, -1.0)
        j = score.argmax(1)
        chosen[torch.arange(b), j] = True
        w = Wn[j]
        if picked.shape[1]:
            w = w - torch.einsum("bkc,bk->bc", picked, torch.einsum("bkc,bc->bk", picked, w))
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-30)
        res = res - (res * w).sum(1, keepdim=True) * w
        picked = torch.cat([picked, w.unsqueeze(1)], 1)
    # what is left of the candidate without its dropped coordinates: f minus their contributions
    left = (Fn - ((raw / norms) * chosen) @ coords).norm(dim=1).clamp_min(1e-30)
    return res.norm(dim=1) / left


def projected_span(view: AttackerView, name: str, om: ObservedModule, rank_tol: float, dim: int | None = None,
                   dropout: float = 0.0, margin: int = MARGIN, rules: SpanRules = STRICT_RULES) -> Span | None:
    """The span of one module's update with the start projected away: the A path, else the B path
    where the transcript allows it. Raises ``Abstain`` when the complement leaves no room to single
    out a token (too few directions beyond the update's rank, or more displaced coordinates than
    free directions); ``None`` when neither factor yields a non-zero update."""
    for project in (project_a, project_b):
        p = project(view, name, om, dropout) if project is project_a else project(view, name, om)
        if p is None:
            continue
        c = p.matrix.shape[1] if p.factor == "A" else p.proj.shape[0]
        if p.factor == "A" and c <= margin:
            raise Abstain(f"projection: the start's space leaves {c} of {p.kept} usable columns of {name} (margin "
                          f"{margin}): no token can be singled out")
        index = torch.arange(c)
        span = fit_span(name, p.matrix, index, index, rank_tol, proj=p.proj, dim=dim, path=p.factor, rules=rules)
        if span is None:
            continue
        room = c - span.rank
        if p.factor == "A" and room <= margin:
            raise Abstain(f"projection: the update of {name} fills {span.rank} of the {c} directions outside the "
                          f"start's space (margin {margin}): no token can be singled out")
        if p.trim and 2 * p.trim >= room:
            raise Abstain(f"projection: the secret permutation may displace {p.trim} coordinates of {name}, more than "
                          f"the {room} free directions outside the update's span can absorb")
        base = {f.name: getattr(span, f.name) for f in fields(Span)}
        return ProjectedSpan(**{**base, "trim": 0, "matrix": None}, coords=p.coords, coord_index=p.coord_index,
                             drop=p.trim, note=p.note)
    return None


def method_note(spans: list[Span]) -> str:
    """What produced the span attack's number, for the row's note: ``projection`` when any span
    projected the start away, with each module's count; empty otherwise."""
    notes = [s.note for s in spans if isinstance(s, ProjectedSpan)]
    return f"{METHOD_NOTE}: {'; '.join(notes)}" if notes else ""
