"""The store's seam: what a backend must do, and the values it hands out.

A backend is a blocking, revisioned key-value store with etcd's MVCC model: one
global revision that every write moves up (strictly increasing, but not always
by one: on a shared etcd, writes outside the store — leases, other writers,
housekeeping keys — take revisions too, so revisions may skip); every revision
of every key kept (a delete writes a tombstone) until compaction, so it can be
read as of any revision between the compaction horizon and now. ``Store``
(``_store.py``) is the async facade over any ``Backend``; ``SqliteBackend``
(``_sqlite.py``) is the embedded one (its revisions do move by exactly one per
write), ``EtcdBackend`` (``etcd/_backend.py``) the one on etcd v3.

Each record carries:

- ``mod_rev``: the revision of its last write (its ``resourceVersion``);
- ``create_rev``: the revision that created it;
- ``spec_rev``: the revision of the last write that changed anything other than
  ``.status`` (and the store-managed ``metadata.resourceVersion`` and
  ``metadata.generation``); status-only writes keep it;
- ``node``: the node whose view it belongs to directly (the backend's
  ``node_of(key, value)``), indexed so a node's view costs what the view holds.

The value rules every backend shares (JSON objects, store-managed metadata,
what counts as a spec change) are the helpers at the end of this module.
"""

from __future__ import annotations

import builtins
import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TypeVar

import edgeproto

from ._errors import GatewayError

__all__ = [
    "UNCHANGED",
    "AlreadyExists",
    "Backend",
    "Compacted",
    "Conflict",
    "Event",
    "Fenced",
    "FutureRevision",
    "NodeOf",
    "NotFound",
    "Record",
    "StoreError",
    "SubscriptionLost",
    "Unavailable",
]

T = TypeVar("T")


class _Unchanged:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()  # what a modify() edit returns to write nothing


# ---- errors -------------------------------------------------------------------------


class StoreError(GatewayError):
    """Root of the store's errors; ``key`` names the key concerned, if any."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class NotFound(StoreError):
    """The key does not exist (or is deleted) at the revision read."""


class AlreadyExists(StoreError):
    """``create`` of a key that exists."""


class Conflict(StoreError):
    """The key's current ``mod_rev`` (or uid) is not the one the writer expected."""


class Compacted(StoreError):
    """The revision asked for is older than the compaction horizon."""


class FutureRevision(StoreError):
    """The revision asked for is newer than the store's current revision."""


class Unavailable(StoreError):
    """The store could not do it right now (database busy or locked, disk full,
    an I/O error, a backend unreachable): the same request may succeed later.
    Callers answering a peer must not treat this as a final refusal."""


class Fenced(StoreError):
    """A fenced write (work only a leader may do) was refused because the fence
    no longer holds: this writer has lost its leadership. Nothing was written."""


class SubscriptionLost(StoreError):
    """The subscriber fell behind (or was closed) and missed events: re-list."""


# ---- records and events -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    key: str
    value: dict[str, Any]
    mod_rev: int
    create_rev: int
    spec_rev: int
    node: str | None


@dataclass(frozen=True, slots=True)
class Event:
    type: Literal["ADDED", "MODIFIED", "DELETED"]
    rev: int  # the revision this write created
    key: str
    record: Record  # new state; for DELETED the last value, with mod_rev = rev
    prev: Record | None  # state before the write (None for ADDED)


NodeOf = Callable[[str, dict[str, Any]], "str | None"]
"""Places a value on the node whose view it belongs to (``edgeproto.owner_node``)."""


# ---- the protocol -------------------------------------------------------------------


class Backend(Protocol):
    """The blocking primitives ``Store`` and the view code are built on.

    Every method may block; ``Store`` calls them from one worker thread at a
    time. Reads take ``rev=None`` for "now", or a revision between the
    compaction horizon and now (else ``Compacted`` / ``FutureRevision``). Every
    failure is a ``StoreError``; ``Unavailable`` when a retry may succeed.
    Records handed out are fresh objects that callers may share but not mutate.
    """

    # ---- reads
    def current_rev(self) -> int:
        """The store's revision now (at least that of the last write)."""
        ...

    def compact_rev(self) -> int:
        """The compaction horizon: reads below it raise ``Compacted``."""
        ...

    def get(self, key: str, *, rev: int | None = None) -> Record:
        """``key`` as of ``rev``; ``NotFound`` if absent or deleted there."""
        ...

    def get_many(self, keys: Iterable[str], *, rev: int | None = None) -> builtins.list[Record]:
        """Records of ``keys`` in the order given (duplicates once); missing
        keys are skipped."""
        ...

    def list(
        self,
        prefix: str,
        *,
        rev: int | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> tuple[builtins.list[Record], int]:
        """Live records under ``prefix`` sorted by key, and the revision read at;
        with ``after`` only keys sorting after it, with ``limit`` at most that
        many (one page of a paged list: read every page at the first one's
        revision)."""
        ...

    def list_by_node(
        self, prefix: str, node: str, *, rev: int | None = None
    ) -> builtins.list[Record]:
        """Live records under ``prefix`` placed on ``node`` as of ``rev``, sorted
        by key. Costs what the node holds, not what the prefix holds."""
        ...

    def changes_since(self, prefix: str, rev: int, *, limit: int = 10000) -> builtins.list[Event]:
        """Events for keys under ``prefix`` above ``rev``, oldest first, at most
        ``limit``; each event's ``prev`` is the state before it."""
        ...

    def read(self, fn: Callable[[Backend], T]) -> T:
        """``fn(self)`` with every read inside seeing one snapshot; nested
        ``read`` calls join it; writes inside are refused."""
        ...

    # ---- writes (each at a new, higher revision; guards checked in the same transaction)
    def create(self, key: str, value: dict[str, Any]) -> Event:
        """A new key (``AlreadyExists`` if live); sets uid, creationTimestamp,
        generation 1."""
        ...

    def update(self, key: str, value: dict[str, Any], *, expect_rev: int | None = None) -> Event:
        """Replace ``key``'s value, keeping uid and creationTimestamp; with
        ``expect_rev`` its ``mod_rev`` must be that (else ``Conflict``)."""
        ...

    def update_status(self, key: str, status: Any, *, expect_rev: int | None = None) -> Event:
        """Replace only ``.status`` (``None`` removes it); ``spec_rev`` is kept."""
        ...

    def modify(
        self,
        key: str,
        edit: Callable[[Record], Any],
        *,
        status: bool = False,
        expect_rev: int | None = None,
    ) -> Event | None:
        """Write ``edit(current record)`` as if read and written in one
        transaction (the whole object, or with ``status`` only its status);
        ``UNCHANGED`` writes nothing and returns ``None``. ``edit`` must be a
        pure function of the record: a backend with optimistic transactions
        (etcd) runs it again on the newer record when another write got in
        between."""
        ...

    def delete(self, key: str, *, expect_rev: int | None = None) -> Event:
        """Write ``key``'s tombstone; the event's record is its last value."""
        ...

    def write_many(self, writes: Sequence[Callable[[], T]]) -> builtins.list[T | Exception]:
        """Run several writes (calls of this backend's write methods) queued
        together by independent callers: each gets its own result or exception,
        in input order. A backend may commit them in one transaction (a failed
        commit fails them all) or each on its own, in any order."""
        ...

    # ---- housekeeping
    def compact(self, rev: int) -> None:
        """Forget history before ``rev``; at or below the horizon, a no-op."""
        ...

    def compact_keep(self, revisions: int) -> None:
        """Compact to ``current_rev() - revisions`` (revisions, not writes)."""
        ...

    def close(self) -> None:
        """Release the backend (idempotent); later calls raise ``StoreError``."""
        ...


# ---- value rules shared by backends -------------------------------------------------


def check_text(what: str, text: object, *, empty: bool = False) -> str:
    """``text`` if it is a storable key, prefix or node name; else ``StoreError``."""
    if not isinstance(text, str):
        raise StoreError(f"{what} must be a string, not {type(text).__name__}")
    if not text and not empty:
        raise StoreError(f"{what} must not be empty")
    if "\x00" in text:
        raise StoreError(f"{what} {text!r} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise StoreError(f"{what} {text!r} is not valid Unicode") from None
    return text


def check_rev_arg(what: str, rev: object) -> None:
    if rev is not None and (not isinstance(rev, int) or isinstance(rev, bool) or rev < 0):
        raise StoreError(f"{what} must be a non-negative integer, not {rev!r}")


def check_limit(limit: object) -> None:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise StoreError(f"limit must be a positive integer, not {limit!r}")


def dump(obj: Any, key: str) -> str:
    """``obj`` as compact JSON text (what a backend stores)."""
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise StoreError(f"{key}: value is not storable as JSON: {exc}", key=key) from None


def normalized_object(key: str, value: object) -> dict[str, Any]:
    """A private, JSON-normalized copy of ``value`` (what a later read returns)."""
    if not isinstance(value, dict):
        raise StoreError(f"{key}: value must be an object, not {type(value).__name__}", key=key)
    obj: dict[str, Any] = json.loads(dump(value, key))
    if not isinstance(obj.setdefault("metadata", {}), dict):
        raise StoreError(f"{key}: metadata must be an object", key=key)
    return obj


def now_rfc3339() -> str:
    return edgeproto.rfc3339(time.time())


def spec_part(value: dict[str, Any]) -> dict[str, Any]:
    """What a write must change to move ``spec_rev`` (and ``generation``)."""
    out = {k: v for k, v in value.items() if k != "status"}
    meta = dict(out.get("metadata") or {})
    meta.pop("resourceVersion", None)
    meta.pop("generation", None)
    out["metadata"] = meta
    return out


def with_rv(value: dict[str, Any], rev: int) -> dict[str, Any]:
    """A shallow copy of ``value`` with ``metadata.resourceVersion`` set to ``rev``."""
    obj = dict(value)
    obj["metadata"] = {**(obj.get("metadata") or {}), "resourceVersion": str(rev)}
    return obj


def place(node_of: NodeOf, key: str, obj: dict[str, Any]) -> str | None:
    """``node_of(key, obj)``, its failures as ``StoreError``."""
    try:
        node = node_of(key, obj)
    except Exception as exc:
        raise StoreError(f"cannot place {key} on a node: {exc}", key=key) from exc
    if node is not None and not isinstance(node, str):
        raise StoreError(
            f"cannot place {key}: node_of returned {type(node).__name__}, not a string",
            key=key,
        )
    return node


SPEC_GENERATION: Final = frozenset(
    {
        "daemonsets",
        "deployments",
        "replicasets",
        "controllerrevisions",
        "nodegroups",
        "edgeapplications",
        "nodeupgradejobs",
    }
)
"""Resources whose ``metadata.generation`` counts changes of ``.spec`` only (as
Kubernetes counts a workload's: its controllers compare it with
``status.observedGeneration``); a label or annotation change does not move it.
Other kinds count every change outside ``.status``."""


def settle_new(obj: dict[str, Any]) -> None:
    """Set the store-managed metadata of a created object (in place)."""
    meta = obj["metadata"]
    meta.pop("resourceVersion", None)
    meta.setdefault("uid", str(uuid.uuid4()))
    meta.setdefault("creationTimestamp", now_rfc3339())
    meta["generation"] = 1


def settle_replacement(prev: Record, obj: dict[str, Any]) -> bool:
    """Set the store-managed metadata of ``obj`` replacing ``prev`` (in place):
    uid and creationTimestamp kept (another uid is a ``Conflict``), generation
    bumped if the spec changed (``SPEC_GENERATION``). True if anything outside
    ``.status`` changed (``spec_rev`` moves)."""
    key = prev.key
    meta = obj["metadata"]
    pmeta = prev.value["metadata"]
    uid = meta.get("uid")
    if uid is not None and uid != pmeta.get("uid"):
        raise Conflict(f"{key}: uid {uid!r} does not match {pmeta.get('uid')!r}", key=key)
    for k in ("uid", "creationTimestamp"):  # set by the store at creation, immutable
        if k in pmeta:
            meta[k] = pmeta[k]
    meta.pop("resourceVersion", None)
    meta.pop("generation", None)
    changed = spec_part(obj) != spec_part(prev.value)
    bumped = changed
    if key.split("/", 1)[0] in SPEC_GENERATION:
        bumped = obj.get("spec") != prev.value.get("spec")
    generation = pmeta.get("generation")
    if not isinstance(generation, int) or isinstance(generation, bool):
        generation = 1
    meta["generation"] = generation + 1 if bumped else generation
    return changed


def with_status(prev: Record, status: Any) -> dict[str, Any]:
    """A private copy of ``prev``'s value with ``.status`` replaced (``None``
    removes it)."""
    obj: dict[str, Any] = json.loads(dump(prev.value, prev.key))
    if status is None:
        obj.pop("status", None)
    else:
        obj["status"] = status
    return obj


def check_expected(prev: Record, expect_rev: int | None) -> Record:
    """``prev`` if it is at ``expect_rev`` (or no revision is expected)."""
    if expect_rev is not None and expect_rev != prev.mod_rev:
        raise Conflict(
            f"{prev.key} has been modified: resourceVersion is {prev.mod_rev}, "
            f"expected {expect_rev}",
            key=prev.key,
        )
    return prev
