"""What a Flower node keeps of its own harness replies, so the ServerApp never sends them back.

The driver hands a client's own results back to it: the update it trained goes back for ``propose``
and ``protect``, the factors it finalized come back as the start of its next ``train``. On the
in-process engine that is a reference; on Flower each was a harness record of tens of MB (a SmolLM2
update with its gradient and start is 26 MB), deflated, hashed and moved over every hop twice, and
a loopback deployment spent more time relaying them than training. A real client keeps its update
and its model; so does a node here:

- the node pickles each value it may be handed back (``KEEP``: the training result's update, a
  probe's update, finalized or round-1 factors) and keeps the pickle under a fresh key, which its
  reply names (``kept``) beside the value itself (the referee still needs the value);
- the ServerApp (``ServerEcho``) remembers which node sent which object, with a digest of its pickle;
  a later request that carries the very same object, unchanged, to that node carries ``Kept(key)``;
- the node unpickles its own copy in place of the marker: the op sees the same values as before, a
  fresh copy, as a relayed one was. A key the node no longer holds (another process, or evicted)
  makes it answer ``missing`` without running the op, and the ServerApp sends the call again with
  the values inline.

Neither side keeps more than ``limit`` values (a few rounds' participants), so memory does not grow
with the clients that are not sampled. Harness records are never counted as traffic, so no byte
count changes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KEPT, MISSING = "kept", "missing"  # reply harness keys: what the node kept, which markers it lacked
# reply field -> the object the node may be handed back (a request's harness value)
KEEP: dict[str, Callable[[Any], Any]] = {
    "result": lambda result: result.update,  # train: a LocalResult; its update comes back to propose/protect
    "update": lambda update: update,  # probe_update
    "factors": lambda factors: factors,  # init and finalize: the next train's start
}


def limit_for(clients_per_round: int) -> int:
    """Values kept: a round's updates and starts with the probe's, twice over."""
    return 4 * clients_per_round + 8


@dataclass(frozen=True)
class Kept:
    """A request's harness value that the receiving node sent the server earlier, by the node's key."""

    key: str


def _pickle(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


class NodeKeeps:
    """The node's side: pickles of the values its replies sent, latest ``limit`` kept."""

    def __init__(self) -> None:
        self.values: OrderedDict[str, bytes] = OrderedDict()

    def keep(self, reply: dict[str, Any], limit: int) -> dict[str, str]:
        """Keep what ``reply`` (an op's harness reply) may be handed back; their keys by reply field."""
        keys = {}
        for name, pick in KEEP.items():
            if reply.get(name) is not None:
                keys[name] = key = os.urandom(8).hex()
                self.values[key] = _pickle(pick(reply[name]))
        while len(self.values) > limit:
            self.values.popitem(last=False)
        return keys

    def resolve(self, harness: dict[str, Any]) -> list[str]:
        """Put the node's own copy in place of each ``Kept`` value of ``harness``; the names it lacks."""
        missing = []
        for name, value in harness.items():
            if isinstance(value, Kept):
                blob = self.values.get(value.key)
                if blob is None:
                    missing.append(name)
                else:
                    self.values.move_to_end(value.key)
                    harness[name] = pickle.loads(blob)  # noqa: S301 (this process's own pickle)
        return missing


class ServerEcho:
    """The ServerApp's side: which node holds which object the driver got back, and its digest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: OrderedDict[int, tuple[Any, int, str, bytes]] = OrderedDict()  # id -> (obj, node, key, digest)

    def register(self, reply: dict[str, Any], node: int) -> None:
        """Note the values a reply from ``node`` says the node kept (a reference holds each id)."""
        for name, key in reply.get(KEPT, {}).items():
            obj = KEEP[name](reply[name])
            self.held[id(obj)] = (obj, node, key, hashlib.sha256(_pickle(obj)).digest())
            self.held.move_to_end(id(obj))
        while len(self.held) > self.limit:
            self.held.popitem(last=False)

    def compress(self, harness: dict[str, Any], node: int) -> dict[str, Any]:
        """``harness`` with ``Kept`` in place of each value ``node`` holds unchanged (the digest is
        checked: an object the driver changed since goes inline)."""
        out = dict(harness)
        for name, value in harness.items():
            entry = self.held.get(id(value))
            if entry is not None and entry[0] is value and entry[1] == node \
                    and hashlib.sha256(_pickle(value)).digest() == entry[3]:
                out[name] = Kept(entry[2])
        return out
