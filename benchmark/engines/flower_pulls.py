"""Quicker retries of Flower's object pulls, in the deployment processes that pull a message's contents.

Why: Flower 1.42 sends a message in two steps, its header (``PushMessages``) and then its contents
(``PushObject``, arrays in 5 MB chunks). A receiver that polls sees the header as soon as the first
step is done and pulls the contents at once; any object not yet stored raises
``ObjectUnavailableError``, and ``flwr.supercore.inflatable.inflatable_utils.pull_objects`` waits
1 s before asking again (doubling up to 10 s). A shebench phase ends only with its last reply, and
its messages carry megabytes, so most hops of a deployment lost about a second this way: the
SuperNode pulling the ServerApp's message from the SuperLink (``flwr.supernode.start_client_internal``)
and the ServerApp pulling each node's reply (``flwr.superlink.grid.http_grid``). Flower has no setting
for this wait. The ClientApp worker (``flower_worker``) pulls with ``RETRY_S`` itself.

What: ``quicken_pulls(module)`` gives that one module a ``pull_objects`` that retries after
``RETRY_S[0]`` seconds, doubling up to ``RETRY_S[1]``, unless its caller names its own backoff; the
real function does the work. It gives up on an object only after Flower's ``max_time`` (2 h), not
after Flower's 500 tries, which at 200 ms would be 100 s: a large message on a slow link takes longer.
Nothing sent or received changes, only how soon a missing object is asked for again (a retry is one
small request). If a Flower upgrade moved the module, renamed its ``pull_objects`` or that function's
backoff arguments, it stops, naming the Flower version, instead of running with Flower's waits
unnoticed.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from benchmark.engines.flower_supernode import FlowerChanged, flower_version, patchable_global

RETRY_S = (0.01, 0.2)  # first retry after 10 ms, doubling up to 200 ms (Flower's: 1 s up to 10 s)
SUPERNODE_LOOP = "flwr.supernode.start_client_internal"  # pulls the ServerApp's messages from the SuperLink
SERVERAPP_GRID = "flwr.superlink.grid.http_grid"  # the ServerApp's Grid: pulls the nodes' replies
BACKOFF_ARGS = ("initial_backoff", "backoff_cap", "max_tries_per_object")


def backoff(retry_s: tuple[float, float] = RETRY_S) -> dict[str, Any]:
    """The keyword arguments of Flower's object pulls that retry as this module does."""
    return dict(zip(BACKOFF_ARGS, (*retry_s, None), strict=True))  # no try limit: Flower's max_time holds


class QuickPulls:
    """``pull_objects`` whose backoff arguments default to ``backoff(retry_s)``."""

    def __init__(self, real: Callable[..., Any], retry_s: tuple[float, float]) -> None:
        self.real, self.retry_s = real, retry_s

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.real(*args, **{**backoff(self.retry_s), **kwargs})


def quicken_pulls(module: str, retry_s: tuple[float, float] = RETRY_S) -> QuickPulls:
    """Give ``module`` a ``pull_objects`` whose retries start at ``retry_s[0]`` seconds and double up to
    ``retry_s[1]``; return it. Again on the same module replaces the earlier one instead of nesting."""
    first, cap = retry_s
    if not 0 < first <= cap:
        raise ValueError(f"object pull retries need 0 < first <= cap seconds (got {first}, {cap})")
    utils = importlib.import_module("flwr.supercore.inflatable.inflatable_utils")
    update = "update benchmark/engines/flower_pulls.py"
    target, real = patchable_global(module, "pull_objects", QuickPulls, f"its object pulls cannot be quickened; {update}")
    if real is not getattr(utils, "pull_objects", None):
        raise FlowerChanged(f"Flower {flower_version()}: {module} does not use inflatable_utils.pull_objects "
                            f"(found {real!r}); {update}")
    missing = [a for a in BACKOFF_ARGS if a not in inspect.signature(real).parameters]
    if missing:
        raise FlowerChanged(f"Flower {flower_version()}: pull_objects takes no {', '.join(missing)}; {update}")
    quick = QuickPulls(real, (first, cap))
    target.pull_objects = quick  # type: ignore[attr-defined]
    return quick
