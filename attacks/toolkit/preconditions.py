"""What a span attack may assume about a view before it runs, and what it says when it cannot.

The contract's ``Attack.reconstruct`` already abstains when a view lacks what ``requires`` names
(plaintext, a public model); what is left here is shared by the attacks that read the layer-0 span
(DAGER, FedSpy, UTR, token_leak, subspace_rank): the abstention when no module yields a usable
update, the demand that the first usable layer be layer 0, and the caveat about an estimated start.
"""

from __future__ import annotations

from collections.abc import Sequence

from attacks.toolkit.decoding import LayerCheck, layer_checks
from attacks.toolkit.projection import method_note
from attacks.toolkit.subspace import STRICT_RULES, SpanRules
from benchmark.contract import Abstain, AttackerView


def no_usable_update(view: AttackerView) -> str:
    """The abstention reason when no module yields a usable span: usually a start the server lacks."""
    if view.prev is None and view.kind != "grad":
        return (f"an {view.kind} upload must be differenced against the client's start, which the server "
                f"does not know (start: {view.start_known})")
    if view.prev is None:
        return ("dL/dA is zero where B starts at zero, and the dL/dB path needs the client's starting A, "
                f"which the server does not know (start: {view.start_known})")
    return "no observed first-layer attention projection with a usable update"


def layer0_checks(view: AttackerView, adaptive: bool, rank_tol: float, purpose: str = "", *,
                  dim: int | None = None, layers: int = 2, exact: bool = True,
                  rules: SpanRules = STRICT_RULES) -> list[LayerCheck]:
    """``layer_checks`` of the view, which must start at layer 0: the vocabulary-wide token check
    compares the batch's span with every token's first-layer input, known only at layer 0.

    Raises ``Abstain`` when no module is usable (``no_usable_update``) or the first usable layer is
    deeper; ``purpose`` names what needs layer 0 in that reason (without it, the reason is
    ``no_usable_update``'s, as the ranking baselines have always said). ``rules``: how spans are read
    (``attacks.toolkit.subspace.SpanRules``)."""
    checks = layer_checks(view, adaptive, rank_tol, dim=dim, layers=layers, exact=exact, rules=rules)
    if not checks:
        raise Abstain(no_usable_update(view))
    if checks[0].layer != 0:
        if not purpose:
            raise Abstain(no_usable_update(view))
        raise Abstain(f"first usable adapted layer is {checks[0].layer}; {purpose} needs layer 0")
    return checks


def start_caveats(view: AttackerView, checks: Sequence[LayerCheck] = ()) -> list[str]:
    """How the attack removed a start the server knows only as an estimate, for the row's note
    (empty when it was known exactly or not needed): ``start: projection`` when a span of ``checks``
    projected it away (``attacks.toolkit.projection``), else ``start: subtraction``, errors and all."""
    if view.kind == "grad" or view.start_known != "estimate":
        return []
    projected = method_note([s for c in checks for s in c.spans])
    if projected:
        return [projected]
    return ["start: subtraction (known only as the server's estimate: the differenced update carries its error)"]
