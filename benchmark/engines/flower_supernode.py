"""Flower's SuperNode with shorter waits between its polls: a drop-in for ``flower-supernode``.

Why: Flower 1.42's SuperNode loop (``flwr.supernode.start_client_internal``) pulls the SuperLink for
a message and, when none is there, sleeps 3 s before it pulls again; once a message arrived it waits
for the ClientApp's reply in 0.5 s sleeps. A shebench run is a chain of phases (start, training,
proposal, upload, finalize: ~18 per defense run), and each one ends with every node pushing its reply
and pulling at once, while the server is still aggregating: the pull finds nothing, and the node
sleeps out its 3 s before it sees the next phase's message. A deployment of the default scenario
took 473 s against 212 s in process, most of the gap in these sleeps. Flower has no setting for
either wait (no flag, no environment variable).

What: this runs Flower's own ``flower-supernode`` entry point, unchanged, after giving the module
``flwr.supernode.start_client_internal`` (and only that module) a ``time`` stand-in whose ``sleep(s)``
sleeps ``min(s, S)``; every other attribute is the real ``time`` module's. The same module's pulls of
a message's contents retry after 10 ms instead of 1 s (``benchmark.engines.flower_pulls``). Nothing
the SuperNode sends or receives changes, only how soon it looks again. If a Flower upgrade moved or renamed that
module or its ``time`` global, the launcher stops, naming the Flower version, instead of running
with Flower's waits unnoticed.

The trade-off: an idle node pulls the SuperLink once per S seconds instead of once per 3 s, so a
SuperLink with N idle nodes answers N / S pulls a second. On loopback or a LAN the default 0.1 s is
cheap; across the internet or with many nodes keep S modest (0.5-1 s).

    python -m benchmark.engines.flower_supernode [--idle-poll-s S] <every flower-supernode argument>

for example, beside the suite's ClientApp worker (``benchmark.engines.flower_worker``):

    python -m benchmark.engines.flower_supernode --idle-poll-s 0.1 --superlink SERVER:9092 \\
        --isolation process --host 127.0.0.1 --port 9094 --node-config "partition-id=0 num-partitions=2"
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from types import ModuleType
from typing import Any

MODULE = "flwr.supernode.start_client_internal"  # the SuperNode loop whose waits are capped
ENTRY_POINT = "flower-supernode"  # flwr's console script
DEFAULT_IDLE_POLL_S = 0.1  # Flower's own: 3 s idle, 0.5 s while waiting for a reply
READY = "shebench supernode: Flower {version} SuperNode, waits capped at {cap} s"


class FlowerChanged(RuntimeError):
    """The installed Flower is not laid out as this launcher expects."""


def flower_version() -> str:
    try:
        return metadata.version("flwr")
    except metadata.PackageNotFoundError:
        return "(flwr not installed)"


class CappedTime:
    """The ``time`` module, except that ``sleep(s)`` sleeps ``min(s, cap_s)``."""

    def __init__(self, real: ModuleType, cap_s: float) -> None:
        self.real, self.cap_s = real, cap_s

    def sleep(self, seconds: float) -> None:
        self.real.sleep(min(seconds, self.cap_s))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def patchable_global(module: str, name: str, stand_in: type, fails: str) -> tuple[ModuleType, Any]:
    """Flower's ``module`` and the real value of its global ``name`` (an earlier ``stand_in`` unwrapped):
    what a patch of one module's global starts from. ``fails`` says what cannot be done if the module
    is gone, which raises ``FlowerChanged`` naming the Flower version."""
    try:
        target = importlib.import_module(module)
    except ImportError as ex:
        raise FlowerChanged(f"Flower {flower_version()} has no module {module} ({ex}): {fails}") from ex
    current = vars(target).get(name)
    return target, (current.real if isinstance(current, stand_in) else current)


def cap_waits(cap_s: float, module: str = MODULE) -> CappedTime:
    """Give ``module`` a ``time`` whose sleeps last at most ``cap_s``; return that stand-in."""
    if not cap_s > 0:
        raise ValueError(f"the cap must be positive (got {cap_s}): 0 would pull the SuperLink without pause")
    update = "check its loop and update benchmark/engines/flower_supernode.py"
    target, real = patchable_global(module, "time", CappedTime, f"the SuperNode's waits cannot be capped; {update}")
    if real is not time:
        raise FlowerChanged(f"Flower {flower_version()}: {module} has no module global `time` (found {real!r}): "
                            f"the SuperNode's waits cannot be capped; {update}")
    stand_in = CappedTime(time, cap_s)
    target.time = stand_in  # type: ignore[attr-defined]
    return stand_in


def supernode_entry_point() -> Callable[[], object]:
    """Flower's ``flower-supernode`` console script function, found in flwr's distribution metadata."""
    try:
        points = [p for p in metadata.distribution("flwr").entry_points
                  if p.group == "console_scripts" and p.name == ENTRY_POINT]
    except metadata.PackageNotFoundError as ex:
        raise FlowerChanged("flwr is not installed: there is no flower-supernode to launch") from ex
    if len(points) != 1:
        raise FlowerChanged(f"Flower {flower_version()} declares {len(points)} `{ENTRY_POINT}` console scripts, not 1")
    return points[0].load()


def main(argv: Sequence[str] | None = None) -> object:
    parser = argparse.ArgumentParser(prog="python -m benchmark.engines.flower_supernode", add_help=False,
                                     allow_abbrev=False, description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--idle-poll-s", type=float, default=DEFAULT_IDLE_POLL_S,
                        help="longest wait of the SuperNode's loop, in seconds (Flower's: 3 and 0.5)")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if not args.idle_poll_s > 0:
        parser.error(f"--idle-poll-s must be positive (got {args.idle_poll_s})")
    if {"-h", "--help"} & set(rest):  # this launcher's option, then Flower's help
        parser.print_help()
        print()
    cap_waits(args.idle_poll_s)
    from benchmark.engines.flower_pulls import SUPERNODE_LOOP, quicken_pulls  # imports this module

    quicken_pulls(SUPERNODE_LOOP)  # the message's contents, pulled from the SuperLink
    run = supernode_entry_point()
    print(READY.format(version=flower_version(), cap=args.idle_poll_s), file=sys.stderr, flush=True)
    sys.argv = [ENTRY_POINT, *rest]  # Flower parses its own arguments from sys.argv
    return run()


if __name__ == "__main__":
    sys.exit(main())
