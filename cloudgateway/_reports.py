"""Edge → cloud: what a node reports (``report`` messages) and may read
(``request`` messages) through its hub connection.

A node writes its own Node's status and the status of the pods and devices
bound to it, the desired values set at the edge of its devices, the twin
history its devices reported while it was offline, and Events. Each report is
answered by an ``ack`` naming its id (the agent's outbox sequence number).
"""

from __future__ import annotations

import copy
import enum
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

import edgeproto
from edgeproto import Message, ProtocolError

from ._errors import GatewayError
from ._events import edge_event
from ._failures import FailureLog
from ._health import merge_node_status
from ._reportcheck import check_json, check_status, desired_values, history_entries
from ._store import AlreadyExists, NotFound, Record, Store, StoreError, Unavailable
from ._validate import Invalid, validate

log = logging.getLogger(__name__)

__all__ = ["RETRY_AFTER", "TWIN_HISTORY", "Rejected", "ReportOp", "Reports", "retry_body"]

# Besides its own Node, a node writes the status of these objects when bound to it.
_NODE_WRITABLE = frozenset({"pods", "devices"})
TWIN_HISTORY = 100  # values kept per device property in status.twinHistory
RETRY_AFTER = (
    1.0  # seconds a node waits at least before resending a report the store could not take
)


class ReportOp(enum.StrEnum):
    STATUS = "status"  # any object the node may write: its .status
    DESIRED = "desired"  # devices: desired values set at the edge
    TWIN_HISTORY = "twin-history"  # devices: values reported while offline
    EVENT = "event"  # the node's own Node: an edge event, kept as an Event


_OPS = frozenset(ReportOp)
# What each report may be about (ownership is checked when it is written).
_TARGETS = frozenset(
    {(ReportOp.STATUS, r) for r in ("nodes", "pods", "devices")}
    | {
        (ReportOp.DESIRED, "devices"),
        (ReportOp.TWIN_HISTORY, "devices"),
        (ReportOp.EVENT, "nodes"),
    }
)


def retry_body(message: str, after: float) -> dict[str, Any]:
    """The ack body that tells a node to send the report again later."""
    return {"error": {"code": 503, "message": message, "retry": True}, "retry_after": after}


class Rejected(GatewayError):
    """A report that will never succeed as sent: answered with ``code`` (an HTTP
    status) and final, so the agent's outbox lets go of it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Reports:
    """Applies nodes' reports to the store; ``counters`` is the hub's."""

    def __init__(self, store: Store, counters: Counter[str]) -> None:
        self._store = store
        self.counters = counters
        self._store_failing = False  # logged once at WARNING, then DEBUG until it recovers
        self._failures = FailureLog(log)

    async def handle(self, node: str, msg: Message) -> dict[str, Any]:
        """Apply one report from ``node``; the body of its ack.

        Every report is answered. ``{}``: applied. ``{"error": {code, message}}``:
        it never will be as sent (400 malformed, 403 not the node's, 404 gone,
        409 refused by the store), final: the agent lets go of it.
        ``{"error": {code: 503, message, retry: true}, "retry_after": s}``: not
        now (the store is busy, full or failing); the agent keeps the report and
        sends it again after ``retry_after`` seconds at the earliest."""
        key, error = msg.res or "", None
        try:
            await self._apply(node, msg, key)
        except Unavailable as exc:
            self.counters["reports_retry"] += 1
            if not self._store_failing:
                self._store_failing = True
                log.warning("store cannot take reports (%s); nodes are told to retry", exc)
            else:
                log.debug("report %s from %s: retry (%s)", key, node, exc)
            return retry_body(str(exc), RETRY_AFTER)
        except ProtocolError as exc:
            self.counters["reports_malformed"] += 1
            error = {"code": 400, "message": str(exc)}
        except Rejected as exc:
            if exc.code == 403:
                self.counters["forbidden"] += 1
            error = {"code": exc.code, "message": str(exc)}
        except NotFound:
            error = {"code": 404, "message": f"{key} not found"}
        except Invalid as exc:  # what the board wrote would make the object invalid
            self.counters["reports_malformed"] += 1
            error = {"code": 400, "message": str(exc)}
        except StoreError as exc:
            error = {"code": 409, "message": str(exc)}
        except Exception as exc:
            # A bug of ours (or input nobody foresaw). Final: retrying would
            # bring the same answer forever and stall the board's outbox.
            self.counters["reports_internal_error"] += 1
            self._failures.failed(f"report {key[:200]!r} {msg.op!r} from node {node} failed", exc)
            error = {"code": 500, "message": f"internal error: {type(exc).__name__}"}
        if error is not None:
            self.counters["reports_rejected"] += 1
            log.debug("report %s from %s rejected: %s", key, node, error)
            return {"error": error}
        self.counters["reports"] += 1
        if self._store_failing:
            self._store_failing = False
            log.warning("store takes reports again")
        return {}

    async def _apply(self, node: str, msg: Message, key: str) -> None:
        if not isinstance(msg.op, str) or msg.op not in _OPS:
            raise ProtocolError(f"unsupported report op {msg.op!r}", code="bad-field")
        op = ReportOp(msg.op)
        resource, _, name = edgeproto.split_key(key)
        if (op, resource) not in _TARGETS:
            raise ProtocolError(f"a {op} report is not about {resource}", code="bad-field")
        if op is ReportOp.STATUS:
            await self._write_status(node, key, check_status(resource, msg.body.get("status")))
        elif op is ReportOp.DESIRED:
            await self._set_desired(node, key, desired_values(msg.body.get("desired")))
        elif op is ReportOp.TWIN_HISTORY:
            await self._add_history(node, key, history_entries(msg.body.get("history")))
        else:
            check_json(dict(msg.body), "event")
            event = edge_event(name, msg.id, msg.body)
            if name != node:
                raise Rejected(403, f"node {node} may not write {key}")
            _checked(event)
            await self._record_event(event)

    async def _write_status(self, node: str, key: str, reported: dict[str, Any]) -> None:
        """A board's status of one of its objects, read, checked and written in
        one store transaction: the fields the gateway owns are kept (a Node's
        Ready condition, a Device's twinHistory), and an object bound to another
        node in the meantime is refused, not overwritten."""
        resource = key.split("/", 1)[0]

        def edit(rec: Record) -> dict[str, Any]:
            _check_owner(node, rec)
            current = rec.value.get("status")
            if resource == "nodes":
                status = merge_node_status(current, reported)
            else:
                status = dict(reported)
            if resource == "devices":
                status.pop("twinHistory", None)  # the gateway's, never the board's
                if isinstance(current, dict) and "twinHistory" in current:
                    status["twinHistory"] = current["twinHistory"]
            _checked({**rec.value, "status": status})
            return status

        await self._store.modify(key, edit, status=True)

    async def _set_desired(self, node: str, key: str, desired: dict[str, str]) -> None:
        """A desired value set at the edge becomes the device's spec desired value."""

        def edit(rec: Record) -> dict[str, Any]:
            _check_owner(node, rec)
            obj = copy.deepcopy(rec.value)
            props = (obj.get("spec") or {}).get("properties")
            known = {p.get("name"): p for p in props or [] if isinstance(p, dict)}
            unknown = sorted(set(desired) - set(known))
            if unknown:
                raise ProtocolError(f"{key} has no properties {unknown}", code="bad-field")
            for name, value in desired.items():
                d = known[name].get("desired")
                d = d if isinstance(d, dict) else {}
                d["value"] = value
                known[name]["desired"] = d
            _checked(obj)
            return obj

        await self._store.modify(key, edit)

    async def _add_history(self, node: str, key: str, entries: list[dict[str, str]]) -> None:
        """Values a device reported while its node was offline, kept (the newest
        ``TWIN_HISTORY`` per property, in timestamp order) in
        ``status.twinHistory[property]``; the latest value stays in ``twins``."""

        def edit(rec: Record) -> dict[str, Any]:
            _check_owner(node, rec)
            status = copy.deepcopy(rec.value.get("status") or {})
            kept = status.get("twinHistory")
            kept = kept if isinstance(kept, dict) else {}
            for e in entries:
                ring = kept.get(e["propertyName"])
                ring = ring if isinstance(ring, list) else []
                item = {"value": e["value"], "timestamp": e["timestamp"]}
                if item not in ring:
                    ring.append(item)
                ring.sort(key=lambda i: int(i.get("timestamp") or 0))
                kept[e["propertyName"]] = ring[-TWIN_HISTORY:]
            status["twinHistory"] = kept
            _checked({**rec.value, "status": status})
            return status

        await self._store.modify(key, edit, status=True)

    async def _record_event(self, event: dict[str, Any]) -> None:
        meta = event["metadata"]
        key = edgeproto.make_key("events", meta["namespace"], meta["name"])
        try:
            await self._store.create(key, event)
            self.counters["edge_events"] += 1
        except AlreadyExists:
            self.counters["edge_events_resent"] += 1  # the outbox resends until acked

    async def request(self, node: str, sent: Mapping[str, int], msg: Message) -> dict[str, Any]:
        """``request{op: get, res: key}``: a node may read objects in its own view
        (``sent``) only; the body of the response."""
        key = msg.res or ""
        if msg.op != "get":
            return {"error": {"code": 400, "message": f"unsupported request op {msg.op!r}"}}
        if key not in sent:
            self.counters["forbidden"] += 1
            return {"error": {"code": 403, "message": f"{key} is not in node {node}'s view"}}
        try:
            rec = await self._store.get(key)
        except NotFound:
            return {"error": {"code": 404, "message": f"{key} not found"}}
        return {"object": edgeproto.encode_object(rec.value), "rev": rec.mod_rev}


def _check_owner(node: str, rec: Record) -> None:
    """A node writes its own Node, and the pods and devices bound to it."""
    resource, _, name = rec.key.split("/", 2)
    if resource == "nodes" and name == node:
        return
    if resource in _NODE_WRITABLE and rec.node == node:
        return
    raise Rejected(403, f"node {node} may not write {rec.key}")


def _checked(obj: dict[str, Any]) -> None:
    """The object a report would leave behind, checked as the API checks what
    it is given (depth, size, JSON, the kind's own rules): ``Invalid`` if not."""
    key = edgeproto.key_of(obj)
    resource, namespace, name = edgeproto.split_key(key)
    validate(edgeproto.resource_by_name(resource), obj, namespace=namespace or None, name=name)
