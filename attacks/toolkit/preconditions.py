"""Checks shared by every attack, so that a view an attack cannot exploit yields a note, not an error."""

from __future__ import annotations

from benchmark.api import AttackerView

MODES = ("naive", "adaptive")


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def unusable(view: AttackerView, need_model: bool = True) -> str:
    """Why a reconstruction attack cannot run on ``view`` ("" when it can)."""
    if not view.modules or not view.has_plaintext:
        return "no plaintext update visible (ciphertext only)"
    if need_model and (view.model is None or view.tokenizer is None):
        return "the view carries no public model or tokenizer"
    return ""


def no_usable_update(view: AttackerView) -> str:
    """The abstention reason when no module yields a usable span: usually a start the server lacks."""
    if view.prev is None and view.kind != "grad":
        return (f"an {view.kind} upload must be differenced against the client's start, which the server "
                f"does not know (start: {view.start_known})")
    if view.prev is None:
        return ("dL/dA is zero where B starts at zero, and the dL/dB path needs the client's starting A, "
                f"which the server does not know (start: {view.start_known})")
    return "no observed first-layer attention projection with a usable update"


def start_caveats(view: AttackerView) -> list[str]:
    """What the attack had to assume about the client's start (empty when it was known exactly or
    not needed): the update was differenced against the server's estimate, errors and all."""
    if view.kind != "grad" and view.start_known == "estimate":
        return ["start known only as the server's estimate: the differenced update carries its error"]
    return []
