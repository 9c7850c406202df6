"""The sync protocol's state machines, sans-io.

Gateway side: a node's view is a membership map ``key -> spec_rev``. A resync
diffs the view as of the agent's ``last_rev`` against the view now; live sync
diffs the last membership sent against the current one. Either way only keys
whose spec revision moved travel (``diff_views``), chunked into messages that
fit the size limit (``change_messages``, ``snapshot_messages``).

Agent side: ``AgentSync`` turns received messages into ``Apply`` batches (one
SQLite transaction each) and, once the caller has persisted a batch, the ack.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import cbor2

from ._envelope import DEFAULT_MAX_MESSAGE, Kind, Message
from ._errors import ProtocolError

__all__ = [
    "MAX_HUBS",
    "MAX_HUB_URL",
    "AgentSync",
    "Apply",
    "Entry",
    "ResyncStats",
    "change_messages",
    "check_hub_url",
    "check_hubs",
    "decode_object",
    "diff_views",
    "encode_object",
    "plan_resync",
    "snapshot_messages",
]

# Room left in a message for the envelope around the entries.
_ENVELOPE_ROOM = 256

# The ``hubs`` field of a sync message: the hub URL of every live gateway
# replica, sent with a resync so that a board can fail over among them.
MAX_HUBS = 32
MAX_HUB_URL = 256


def check_hub_url(url: Any) -> str:
    """``url`` if it is a hub URL a board can connect to
    (``wss://HOST[:PORT][/PATH]``, printable ASCII, at most ``MAX_HUB_URL``
    characters, no user, query or fragment); a ``ProtocolError`` saying what is
    wrong otherwise."""
    if not isinstance(url, str):
        raise ProtocolError(f"hub URL must be a string, not {type(url).__name__}", code="bad-field")
    shown = repr(url[:80])
    if len(url) > MAX_HUB_URL:
        raise ProtocolError(
            f"hub URL {shown}... is {len(url)} characters, limit {MAX_HUB_URL}", code="bad-field"
        )
    if not url.isascii() or not url.isprintable() or " " in url:
        raise ProtocolError(f"hub URL {shown} has characters a URL cannot", code="bad-field")
    if not url.startswith("wss://"):
        raise ProtocolError(f"hub URL {shown} is not wss://HOST:PORT/", code="bad-field")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ProtocolError(f"hub URL {shown} is malformed: {exc}", code="bad-field") from None
    if not parts.hostname or port == 0:
        raise ProtocolError(f"hub URL {shown} has no host or port", code="bad-field")
    if parts.username is not None or parts.query or parts.fragment or "#" in url:
        raise ProtocolError(
            f"hub URL {shown} must be wss://HOST:PORT/ (no user, query or fragment)",
            code="bad-field",
        )
    return url


def check_hubs(value: Any) -> tuple[str, ...]:
    """A ``hubs`` field checked: a list of 1 to ``MAX_HUBS`` distinct hub URLs
    (``check_hub_url``); a ``ProtocolError`` saying what is wrong otherwise. An
    empty list is refused: a sender with nothing to say leaves the field out,
    which means "keep the list you have"."""
    if not isinstance(value, list | tuple):
        raise ProtocolError(
            f"hubs must be a list of wss:// URLs, not {type(value).__name__}", code="bad-field"
        )
    if not value:
        raise ProtocolError("hubs is an empty list", code="bad-field")
    if len(value) > MAX_HUBS:
        raise ProtocolError(f"hubs has {len(value)} URLs, limit {MAX_HUBS}", code="bad-field")
    urls = tuple(check_hub_url(u) for u in value)
    if len(set(urls)) != len(urls):
        raise ProtocolError("hubs lists a URL twice", code="bad-field")
    return urls


def _hubs_of(msg: Message) -> tuple[str, ...] | None:
    """The message's checked ``hubs``, or None when it has none (keep the list)."""
    value = msg.body.get("hubs")
    return None if value is None else check_hubs(value)


def _hubs_room(hubs: Sequence[str] | None) -> int:
    return len(cbor2.dumps(list(hubs))) + 8 if hubs else 0


@dataclass(frozen=True, slots=True)
class Entry:
    """One object on the wire: its key, the revision of its last write and the
    object itself, CBOR-encoded once by the gateway and stored as is by the agent."""

    key: str
    rev: int
    data: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"k": self.key, "r": self.rev, "o": self.data}

    @classmethod
    def from_wire(cls, value: Any) -> Entry:
        if not isinstance(value, Mapping):
            raise ProtocolError("object entry is not a map", code="bad-field")
        key, rev, data = value.get("k"), value.get("r"), value.get("o")
        if not isinstance(key, str) or not key or len(key) > 512:
            raise ProtocolError("object entry has no valid key", code="bad-field")
        if type(rev) is not int or rev < 0:
            raise ProtocolError(f"object entry {key!r} has no valid rev", code="bad-field")
        if not isinstance(data, bytes):
            raise ProtocolError(f"object entry {key!r} has no encoded object", code="bad-field")
        return cls(key, rev, data)

    @property
    def size(self) -> int:
        return len(self.key) + len(self.data) + 16


def encode_object(obj: Mapping[str, Any]) -> bytes:
    return cbor2.dumps(obj)


def decode_object(data: bytes) -> dict[str, Any]:
    try:
        obj = cbor2.loads(data)
    except Exception as exc:
        raise ProtocolError(f"object is not valid CBOR: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("object is not a map")
    return obj


def diff_views(old: Mapping[str, int], new: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """Keys to send (new, or spec revision changed) and keys to delete, sorted."""
    upserts = sorted(k for k, rev in new.items() if old.get(k) != rev)
    deletes = sorted(k for k in old if k not in new)
    return upserts, deletes


def plan_resync(last_rev: int, current_rev: int, compact_rev: int) -> Literal["delta", "snapshot"]:
    """A delta is possible when the agent's revision is still in the store's history."""
    if last_rev <= 0 or last_rev > current_rev or last_rev < compact_rev:
        return "snapshot"
    return "delta"


def _chunks(entries: Sequence[Entry], budget: int) -> Iterator[list[Entry]]:
    chunk: list[Entry] = []
    used = 0
    for e in entries:
        if e.size > budget:
            raise ProtocolError(
                f"object {e.key} ({e.size} bytes) exceeds the message limit", code="too-large"
            )
        if chunk and used + e.size > budget:
            yield chunk
            chunk, used = [], 0
        chunk.append(e)
        used += e.size
    yield chunk


def snapshot_messages(
    rev: int,
    entries: Sequence[Entry],
    *,
    max_size: int = DEFAULT_MAX_MESSAGE,
    hubs: Sequence[str] | None = None,
) -> list[Message]:
    """A full view with replace semantics, split into messages; the last has
    more=False. ``hubs`` (every live replica's hub URL) rides in the first."""
    chunks = list(_chunks(entries, max_size - _ENVELOPE_ROOM - _hubs_room(hubs)))
    msgs = [
        Message(
            Kind.SNAPSHOT,
            rev=rev,
            body={"objects": [e.to_wire() for e in chunk], "more": i < len(chunks) - 1},
        )
        for i, chunk in enumerate(chunks)
    ]
    return _with_hubs(msgs, hubs)


def _with_hubs(msgs: list[Message], hubs: Sequence[str] | None) -> list[Message]:
    if hubs:
        first = msgs[0]
        msgs[0] = Message(first.kind, rev=first.rev, body={**first.body, "hubs": list(hubs)})
    return msgs


def change_messages(
    rev: int,
    upserts: Sequence[Entry],
    deletes: Sequence[str],
    *,
    resync: bool = False,
    max_size: int = DEFAULT_MAX_MESSAGE,
    hubs: Sequence[str] | None = None,
) -> list[Message]:
    """Upserts and deletes up to ``rev``; the last message has more=False and
    only then may the agent record ``rev`` as its last_rev. ``hubs`` (every
    live replica's hub URL) rides in the first."""
    budget = max_size - _ENVELOPE_ROOM - _hubs_room(hubs)
    del_entries = [Entry(k, 0, b"") for k in deletes]
    msgs: list[Message] = []
    for chunk in _chunks(list(upserts) + del_entries, budget):
        msgs.append(
            Message(
                Kind.CHANGE,
                rev=rev,
                body={
                    "upserts": [e.to_wire() for e in chunk if e.data],
                    "deletes": [e.key for e in chunk if not e.data],
                    "more": True,
                    "resync": resync,
                },
            )
        )
    last = msgs[-1]
    msgs[-1] = Message(last.kind, rev=last.rev, body={**last.body, "more": False})
    return _with_hubs(msgs, hubs)


@dataclass(frozen=True, slots=True)
class ResyncStats:
    mode: Literal["delta", "snapshot"]
    bytes: int
    seconds: float
    objects: int


@dataclass(frozen=True, slots=True)
class Apply:
    """A batch to persist in one transaction. ``rev`` is set when the batch
    completes a revision: store it as last_rev in the same transaction, then
    send ``AgentSync.ack(rev)``. ``replace`` drops every object not in upserts.
    ``hubs``: the gateway's list of live replicas' hub URLs, to keep in place of
    the one known (None: keep it)."""

    upserts: list[Entry]
    deletes: list[str]
    rev: int | None
    replace: bool = False
    resync: ResyncStats | None = None
    hubs: tuple[str, ...] | None = None


@dataclass(slots=True)
class _Pending:
    mode: Literal["delta", "snapshot"]
    started: float
    nbytes: int = 0
    objects: int = 0
    snapshot: list[Entry] = field(default_factory=list)
    hubs: tuple[str, ...] | None = None


class AgentSync:
    """Agent side of the sync: builds hello, turns snapshot/change messages into
    ``Apply`` batches. ``now`` values are monotonic seconds supplied by the caller."""

    def __init__(self, node: str, last_rev: int, *, max_snapshot_objects: int = 200_000) -> None:
        self.node = node
        self.last_rev = last_rev
        self._pending: _Pending | None = None
        self._max_snapshot = max_snapshot_objects
        self._hello_at: float | None = None

    def hello(self, *, now: float, agent_version: str = "") -> Message:
        self._pending = None
        self._hello_at = now
        return Message(
            Kind.HELLO, body={"node": self.node, "last_rev": self.last_rev, "agent": agent_version}
        )

    def receive(self, msg: Message, *, nbytes: int, now: float) -> Apply | None:
        if msg.kind is Kind.SNAPSHOT:
            return self._snapshot(msg, nbytes, now)
        if msg.kind is Kind.CHANGE:
            return self._change(msg, nbytes, now)
        raise ProtocolError(f"{msg.kind.value} is not a sync message", code="unexpected")

    def persisted(self, rev: int) -> Message:
        """The caller committed a batch with this rev: the ack to send."""
        self.last_rev = rev
        return Message(Kind.ACK, rev=rev)

    def _started(self, now: float) -> float:
        """A resync's clock starts at hello (it includes the gateway's work)."""
        started = now if self._hello_at is None else min(self._hello_at, now)
        self._hello_at = None
        return started

    def _rev(self, msg: Message) -> int:
        if msg.rev is None:
            raise ProtocolError(f"{msg.kind.value} without rev", code="bad-field")
        return msg.rev

    def _snapshot(self, msg: Message, nbytes: int, now: float) -> Apply | None:
        rev = self._rev(msg)
        objects = msg.body.get("objects", [])
        if not isinstance(objects, list):
            raise ProtocolError("snapshot objects is not a list", code="bad-field")
        entries = [Entry.from_wire(o) for o in objects]
        hubs = _hubs_of(msg)
        p = self._pending
        if p is None or p.mode != "snapshot":
            p = self._pending = _Pending("snapshot", self._started(now))
        if hubs is not None:
            p.hubs = hubs
        p.nbytes += nbytes
        p.snapshot.extend(entries)
        p.objects += len(entries)
        if len(p.snapshot) > self._max_snapshot:
            self._pending = None
            raise ProtocolError("snapshot exceeds the agent's object limit", code="too-large")
        if msg.body.get("more"):
            return None
        self._pending = None
        stats = ResyncStats("snapshot", p.nbytes, max(0.0, now - p.started), p.objects)
        return Apply(p.snapshot, [], rev, replace=True, resync=stats, hubs=p.hubs)

    def _change(self, msg: Message, nbytes: int, now: float) -> Apply:
        rev = self._rev(msg)
        ups = msg.body.get("upserts", [])
        dels = msg.body.get("deletes", [])
        if not isinstance(ups, list) or not isinstance(dels, list):
            raise ProtocolError("change upserts/deletes must be lists", code="bad-field")
        if not all(isinstance(k, str) and k for k in dels):
            raise ProtocolError("change deletes must be keys", code="bad-field")
        entries = [Entry.from_wire(o) for o in ups]
        hubs = _hubs_of(msg)
        more = bool(msg.body.get("more"))
        stats = None
        if msg.body.get("resync"):
            p = self._pending
            if p is None or p.mode != "delta":
                p = self._pending = _Pending("delta", self._started(now))
            if hubs is not None:
                p.hubs = hubs
            hubs = None  # kept for the batch that completes the resync
            p.nbytes += nbytes
            p.objects += len(entries) + len(dels)
            if not more:
                self._pending = None
                stats = ResyncStats("delta", p.nbytes, max(0.0, now - p.started), p.objects)
                hubs = p.hubs
        return Apply(entries, list(dels), None if more else rev, resync=stats, hubs=hubs)
