"""The network between one process's clients and its server: metered, recorded, copied.

Every message crosses a ``Channel``: the ``WireMeter`` counts its bytes, the server's ``Transcript``
records it (the server sent or received it), and the receiving side gets its own copy (tensors
cloned, metadata through JSON, timings dropped), so no object is ever shared between the roles.
Whatever an attack later receives is built from the transcript by ``attacker_view`` alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from benchmark.contract import (
    AttackerView,
    ClientInfo,
    LoRAFactors,
    ServerRole,
    StartKnowledge,
    WirePayload,
    json_default,
)
from benchmark.federation.wire import WireMeter

KINDS = ("setup", "init", "negotiation", "upload", "probe", "broadcast")


@dataclass(frozen=True)
class Message:
    """One message in the server's transcript. ``round`` 0 is setup; ``clients`` is the sender of an
    upward message or the receivers of a downward one."""

    round: int
    kind: str
    direction: str  # "up" (client -> server) | "down" (server -> clients)
    clients: tuple[int, ...]
    payload: WirePayload


@dataclass
class Transcript:
    """Every message the server sent and received, in order: the attacker's whole knowledge."""

    messages: list[Message] = field(default_factory=list)

    def add(self, message: Message) -> None:
        if message.kind not in KINDS:
            raise ValueError(f"transcript: unknown message kind {message.kind!r}; valid: {', '.join(KINDS)}")
        self.messages.append(message)

    def find(self, kind: str, client_id: int, rnd: int) -> tuple[int, Message] | None:
        """The last ``kind`` message of ``client_id`` in round ``rnd`` and its position."""
        for i in range(len(self.messages) - 1, -1, -1):
            m = self.messages[i]
            if m.kind == kind and m.round == rnd and client_id in m.clients:
                return i, m
        return None

    def drop_last(self, kind: str) -> None:
        """Forget the latest message once its content has been read (bounds memory when one
        simulation records many probe messages); it must be of ``kind``."""
        if not self.messages or self.messages[-1].kind != kind:
            raise ValueError(f"transcript: the latest message is not a {kind!r} message")
        self.messages.pop()

    def start_message(self, client_id: int, rnd: int) -> Message | None:
        """The last model message (``init`` or ``broadcast``) the client received before it uploaded
        in round ``rnd``: what its start in that round came from."""
        found = self.find("upload", client_id, rnd) or self.find("probe", client_id, rnd)
        if found is None:
            raise ValueError(f"transcript: client {client_id} sent nothing in round {rnd}")
        for m in reversed(self.messages[: found[0]]):
            if m.direction == "down" and m.kind in ("init", "broadcast") and client_id in m.clients:
                return m
        return None


def wire_copy(payload: WirePayload) -> WirePayload:
    """The receiver's own copy: cloned tensors, bytes as sent, JSON metadata; no timings (those are
    the sender's measurements, not traffic)."""
    cipher = {k: (v if isinstance(v, bytes | bytearray) else list(v)) for k, v in payload.cipher.items()}
    meta = json.loads(json.dumps(payload.meta, default=json_default))
    return WirePayload(payload.sender, {k: v.detach().clone() for k, v in payload.plain.items()}, cipher, meta)


class Channel:
    """Meters and records each message and returns the receiving side's copy."""

    def __init__(self, meter: WireMeter | None = None, transcript: Transcript | None = None) -> None:
        self.meter = meter if meter is not None else WireMeter()
        self.transcript = transcript if transcript is not None else Transcript()

    def up(self, payload: WirePayload, rnd: int, client_id: int, kind: str, metered: bool = True) -> WirePayload:
        copy = wire_copy(payload)
        self.transcript.add(Message(rnd, kind, "up", (client_id,), copy))
        if metered:
            self.meter.count(kind, copy, 1)
        return wire_copy(copy)

    def down(self, payload: WirePayload, rnd: int, receivers: Sequence[int], kind: str) -> WirePayload:
        copy = wire_copy(payload)
        self.transcript.add(Message(rnd, kind, "down", tuple(receivers), copy))
        self.meter.count(kind, copy, len(receivers))
        return wire_copy(copy)

    def again(self, sent: Message, rnd: int, receivers: Sequence[int]) -> WirePayload:
        """``sent``, a downward message this channel recorded, sent once more to ``receivers``: metered
        and recorded as a message of its own that shares the recorded payload (recorded payloads are
        never changed: every reader copies them). So re-sending the latest aggregate to each sampled
        client that missed it, nearly every participant of a large federation, adds a record to the
        transcript, never a copy of the model."""
        if sent.direction != "down":
            raise ValueError(f"transcript: only a downward message can be sent again, not a {sent.direction!r} one")
        self.transcript.add(Message(rnd, sent.kind, "down", tuple(receivers), sent.payload))
        self.meter.count(sent.kind, sent.payload, len(receivers))
        return wire_copy(sent.payload)


# ---- the server's side of the engine: views from the transcript ------------------------------


def read_init(payload: WirePayload, client: ClientInfo) -> dict[str, LoRAFactors]:
    """A client's round-1 factors from the server's ``init`` message (B starts at zero, as in peft)."""
    out = {}
    for key, A in payload.plain.items():
        name = key.rsplit("/", 1)[0]
        B = A.new_zeros(int(payload.meta["out_features"][name]), A.shape[0])
        out[name] = LoRAFactors(A.clone(), B, client.scale)
    return out


def start_knowledge(server: ServerRole, transcript: Transcript, client: ClientInfo, rnd: int) -> StartKnowledge:
    """What the server knows of ``client``'s start in round ``rnd``, from its transcript alone.

    A broadcast's start is what the server role can replay of it (``known_start``); an ``init``
    message's, what the server role says its clients keep of it (``known_init``: exact unless the
    defense's clients draw their own). A round-1 start the server never saw (``threat.init=client``,
    or a defense whose clients replace the server's) is estimated, if at all, from the client's own
    upload of that round (``start_from_upload``), which the transcript holds whenever a view is built
    (the driver builds views only after the round's uploads, the probe's after its round)."""
    msg = transcript.start_message(client.client_id, rnd)
    if msg is not None and msg.kind == "broadcast":
        return server.known_start(wire_copy(msg.payload), client)
    if msg is None:
        unseen = StartKnowledge.nothing("the client drew its round-1 factors privately (threat.init=client); "
                                        "the server never saw them")
    else:
        unseen = server.known_init(read_init(msg.payload, client), client)
        if unseen.known != "none":
            return unseen
    found = transcript.find("upload", client.client_id, rnd)
    if found is None:
        return unseen
    guess = server.start_from_upload(wire_copy(found[1].payload), client)
    return replace(guess, note="; ".join(x for x in (unseen.note, guess.note) if x))


@dataclass(frozen=True)
class PublicFacts:
    """What the server knows without any message: the base model (as a builder of public copies with
    a delta merged), tokenizer, task format (how many prompt tokens training keeps; a decoder
    classifier's verbalizer, the vocabulary id of each label word), and the hyperparameters it set."""

    build_model: Callable[[dict[str, Any]], Any]  # module deltas (original column order) -> model copy
    tokenizer: Any
    task: str
    template: str
    device: str = "cpu"
    prompt_tokens: int | None = None
    label_token_ids: tuple[int, ...] = ()


def attacker_view(server: ServerRole, transcript: Transcript, client: ClientInfo, rnd: int, kind: str,
                  public: PublicFacts, **hyper: Any) -> AttackerView | None:
    """The attacker's view of ``client``'s ``kind`` message (``upload`` or ``probe``) in round ``rnd``:
    the server role's reading of the message, what it knows of the start, and a public model with
    the global delta it can compute. ``hyper``: lr, local_steps, batch_size, candidates, candidate_labels."""
    found = transcript.find(kind, client.client_id, rnd)
    if found is None:
        return None
    payload = wire_copy(found[1].payload)
    view = server.observe(payload)
    start = start_knowledge(server, transcript, client, rnd)
    deltas = {n: f.delta() for n, f in start.factors.items()} if start.factors else {}
    note = "; ".join(x for x in (view.note, f"start: {start.known} ({start.note})" if start.note else "") if x)
    view = replace(view, prev=start.factors, start_known=start.known, start_space=start.spaces,
                   model=public.build_model(deltas),
                   tokenizer=public.tokenizer, task=public.task, template=public.template,
                   prompt_tokens=public.prompt_tokens,
                   label_token_ids=public.label_token_ids, note=note, **hyper)
    return on_device(view, public.device)


def on_device(view: AttackerView, device: str) -> AttackerView:
    """Put the view's tensors where the public model lives, so attacks need no device bookkeeping."""

    def move(t: Any) -> Any:
        return None if t is None else t.to(device)

    modules = {n: replace(m, A=move(m.A), B=move(m.B), A_hidden=move(m.A_hidden), B_hidden=move(m.B_hidden))
               for n, m in view.modules.items()}
    prev = None if view.prev is None else {n: LoRAFactors(move(f.A), move(f.B), f.scale) for n, f in view.prev.items()}
    return replace(view, modules=modules, prev=prev)


def describe_upload(view: AttackerView) -> str:
    """A short line of what the server could read of an upload, for the report's threat model."""
    if not view.modules:
        return f"ciphertext only ({view.cipher_bytes / 1e6:.2f} MB)" if view.cipher_bytes else "nothing"
    parts = []
    for factor in ("A", "B"):
        seen = [getattr(m, factor) for m in view.modules.values()]
        masks = [getattr(m, f"{factor}_hidden") for m in view.modules.values()]
        total = sum(t.numel() for t, h in zip(seen, masks) if t is not None) or 0
        hidden = sum(int(h.sum()) for t, h in zip(seen, masks) if t is not None and h is not None)
        if all(t is None for t in seen):
            parts.append(f"no {factor}")
        elif hidden:
            parts.append(f"{factor} ({100 * (1 - hidden / max(1, total)):.1f}% visible)")
        else:
            parts.append(factor)
    permuted = any(m.columns_permuted for m in view.modules.values())
    text = "plaintext " + ", ".join(parts) + (" (columns permuted)" if permuted else "")
    if view.cipher_bytes:
        text += f"; {view.cipher_bytes / 1e6:.2f} MB ciphertext"
    return text
