"""Edge → cloud: what a node reports (``report`` messages) and may read
(``request`` messages) through its hub connection.

A node writes its own Node's status and the status of the pods and devices
bound to it, the desired values set at the edge of its devices, the twin
history its devices reported while it was offline, and Events. Each report is
answered by an ``ack`` naming its id (the agent's outbox sequence number).
"""

from __future__ import annotations

import contextlib
import copy
import enum
import heapq
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

import edgeproto
from edgeproto import Message, ProtocolError
from edgeproto.usage import parse_stats

from ._errors import GatewayError
from ._events import EVENT_NAMESPACE, edge_event
from ._events import SOURCE as EVENT_SOURCE
from ._failures import FailureLog
from ._health import merge_node_status
from ._releases import Releases
from ._reportcheck import check_status, desired_values, history_entries, upgrade_report
from ._ssa import without_managed_fields
from ._store import AlreadyExists, Conflict, NotFound, Record, Store, StoreError, Unavailable
from ._upgradehub import REQUEST_OPS, UpgradeChannel
from ._usage import UsageCache
from ._validate import Invalid, validate

log = logging.getLogger(__name__)

__all__ = [
    "RETRY_AFTER",
    "TWIN_HISTORY",
    "Rejected",
    "ReportLimits",
    "ReportOp",
    "Reports",
    "retry_body",
]

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
    STATS = "stats"  # the node's own Node: resource usage for `top` (kept in memory)
    UPGRADE = "upgrade"  # the node's own Node: how far an agent upgrade got (edgeproto.upgrade)


_OPS = frozenset(ReportOp)
# A rejected report's HTTP-style code as a metric label.
_REASONS = {400: "malformed", 403: "forbidden", 404: "not_found", 409: "conflict"}
# What each report may be about (ownership is checked when it is written).
_TARGETS = frozenset(
    {(ReportOp.STATUS, r) for r in ("nodes", "pods", "devices")}
    | {
        (ReportOp.DESIRED, "devices"),
        (ReportOp.TWIN_HISTORY, "devices"),
        (ReportOp.EVENT, "nodes"),
        (ReportOp.STATS, "nodes"),
        (ReportOp.UPGRADE, "nodes"),
    }
)


@dataclass(frozen=True, slots=True)
class ReportLimits:
    """What one node may write. Rates are token buckets per node: ``rate`` per
    second sustained, ``burst`` at once; a report over them is answered "try
    again later" (429, not final: the board's outbox keeps it and, for status
    reports, coalesces it with newer ones meanwhile). Totals are kept by
    pruning the oldest: a board's newest events and history matter most.

    The agent coalesces a twin's status per flush (~15 reports/s however fast
    the device updates) and reports node and pod status on change only, so the
    defaults leave a busy board several times what it needs."""

    rate: float = 100.0  # reports per second per node, all kinds together
    burst: int = 1000  # e.g. the backlog of a board coming back online
    event_rate: float = 10.0  # events per second per node
    event_burst: int = 200
    events_kept: int = 1000  # events per node; beyond it the oldest are deleted
    history_bytes: int = 256 * 1024  # a device's status.twinHistory; the oldest go first


class _Bucket:
    """A token bucket: ``refill`` says how long until a token is there (0: now)."""

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.at = now

    def refill(self, now: float) -> float:
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
        self.at = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate


def retry_body(message: str, after: float, *, code: int = 503) -> dict[str, Any]:
    """The ack body that tells a node to send the report again later."""
    return {"error": {"code": code, "message": message, "retry": True}, "retry_after": after}


class Rejected(GatewayError):
    """A report that will never succeed as sent: answered with ``code`` (an HTTP
    status) and final, so the agent's outbox lets go of it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Reports:
    """Applies nodes' reports to the store; ``counters`` is the hub's."""

    def __init__(
        self,
        store: Store,
        counters: Counter[str],
        limits: ReportLimits = ReportLimits(),
        *,
        clock: Callable[[], float] = trio.current_time,
        usage: UsageCache | None = None,
        releases: Releases | None = None,
    ) -> None:
        self._store = store
        # agent upgrades: release requests and upgrade reports (_upgradehub)
        self.upgrades = UpgradeChannel(store, releases, counters)
        self.usage = usage if usage is not None else UsageCache()
        self.counters = counters
        self.limits = limits
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._event_buckets: dict[str, _Bucket] = {}
        # Events per node: counted from the store on a node's first event, then
        # an upper bound (TTL pruning and API deletes are not seen) that says
        # when to count again and prune.
        self._events: dict[str, int] = {}
        self._store_failing = False  # logged once at WARNING, then DEBUG until it recovers
        self._failures = FailureLog(log)
        # (op, outcome) → reports: outcome "acked", or why not (malformed,
        # forbidden, not_found, conflict, internal_error: final; throttled,
        # store_unavailable: the node sends it again later).
        self.outcomes: Counter[tuple[str, str]] = Counter()

    async def handle(self, node: str, msg: Message) -> dict[str, Any]:
        """Apply one report from ``node``; the body of its ack.

        Every report is answered. ``{}``: applied. ``{"error": {code, message}}``:
        it never will be as sent (400 malformed, 403 not the node's, 404 gone,
        409 refused by the store, 500 a failure of ours), final: the agent lets
        go of it. ``{"error": {code, message, retry: true}, "retry_after": s}``:
        not now (503 the store is busy, full or failing; 429 the node is over
        its rate); the agent keeps the report and sends it again after
        ``retry_after`` seconds at the earliest."""
        key, error, reason = msg.res or "", None, ""
        op = msg.op if isinstance(msg.op, str) and msg.op in _OPS else "unknown"
        wait = self._throttle(node, msg.op)
        if wait:
            self.counters["reports_throttled"] += 1
            self.outcomes[op, "throttled"] += 1
            log.debug("report %s from %s throttled for %.2f s", key, node, wait)
            return retry_body(
                f"node {node} is over its report rate; send again in {wait:.2f} s",
                round(wait + 0.005, 2),
                code=429,
            )
        try:
            await self._apply(node, msg, key)
        except Unavailable as exc:
            self.counters["reports_retry"] += 1
            self.outcomes[op, "store_unavailable"] += 1
            if not self._store_failing:
                self._store_failing = True
                log.warning("store cannot take reports (%s); nodes are told to retry", exc)
            else:
                log.debug("report %s from %s: retry (%s)", key, node, exc)
            return retry_body(str(exc), RETRY_AFTER)
        except ProtocolError as exc:
            self.counters["reports_malformed"] += 1
            error = {"code": 400, "message": str(exc)}
            reason = "malformed"
        except Rejected as exc:
            if exc.code == 403:
                self.counters["forbidden"] += 1
            error = {"code": exc.code, "message": str(exc)}
            reason = _REASONS.get(exc.code, f"http_{exc.code}")
        except NotFound:
            error = {"code": 404, "message": f"{key} not found"}
            reason = "not_found"
        except Invalid as exc:  # what the board wrote would make the object invalid
            self.counters["reports_malformed"] += 1
            error = {"code": 400, "message": str(exc)}
            reason = "malformed"
        except StoreError as exc:
            error = {"code": 409, "message": str(exc)}
            reason = "conflict"
        except Exception as exc:
            # A bug of ours (or input nobody foresaw). Final: retrying would
            # bring the same answer forever and stall the board's outbox.
            self.counters["reports_internal_error"] += 1
            self._failures.failed(f"report {key[:200]!r} {msg.op!r} from node {node} failed", exc)
            error = {"code": 500, "message": f"internal error: {type(exc).__name__}"}
            reason = "internal_error"
        if error is not None:
            self.counters["reports_rejected"] += 1
            self.outcomes[op, reason] += 1
            log.debug("report %s from %s rejected: %s", key, node, error)
            return {"error": error}
        self.counters["reports"] += 1
        self.outcomes[op, "acked"] += 1
        if self._store_failing:
            self._store_failing = False
            log.warning("store takes reports again")
        return {}

    def _throttle(self, node: str, op: Any) -> float:
        """Seconds until ``node`` may send this report; 0: go ahead (its tokens
        are spent; a throttled report spends none)."""
        now, lim = self._clock(), self.limits
        buckets = [self._buckets.get(node) or _Bucket(lim.rate, lim.burst, now)]
        self._buckets[node] = buckets[0]
        if op == ReportOp.EVENT:
            buckets.append(
                self._event_buckets.get(node) or _Bucket(lim.event_rate, lim.event_burst, now)
            )
            self._event_buckets[node] = buckets[1]
        wait = max(b.refill(now) for b in buckets)
        if not wait:
            for b in buckets:
                b.tokens -= 1.0
        return wait

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
        elif op is ReportOp.STATS:
            if name != node:
                raise Rejected(403, f"node {node} may not report the usage of {key}")
            self.usage.put(
                node, parse_stats(msg.body.get("stats"))
            )  # ephemeral, as metrics-server's: memory only
            self.counters["stats_reports"] += 1
        elif op is ReportOp.UPGRADE:
            report = upgrade_report(msg.body)
            if name != node:
                raise Rejected(403, f"node {node} may not report the upgrade of {key}")
            await self.upgrades.report(node, report)
        else:
            event = edge_event(name, msg.id, msg.body)
            if name != node:
                raise Rejected(403, f"node {node} may not write {key}")
            _checked(event)
            await self._record_event(node, event)

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
            return status  # checked (check_status); the spec it sits beside is unchanged

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

        budget = self.limits.history_bytes
        pruned = 0

        def edit(rec: Record) -> dict[str, Any]:
            nonlocal pruned
            _check_owner(node, rec)
            props = (rec.value.get("spec") or {}).get("properties")
            known = {p.get("name") for p in props or [] if isinstance(p, dict)}
            unknown = sorted({e["propertyName"] for e in entries} - known)
            if unknown:
                raise ProtocolError(f"{key} has no properties {unknown[:10]}", code="bad-field")
            status: dict[str, Any] = json.loads(json.dumps(rec.value.get("status") or {}))
            kept = status.get("twinHistory")
            kept = kept if isinstance(kept, dict) else {}
            for name in list(kept):  # properties removed from the spec meanwhile
                if name not in known:
                    del kept[name]
            for e in entries:
                ring = kept.get(e["propertyName"])
                ring = ring if isinstance(ring, list) else []
                item = {"value": e["value"], "timestamp": e["timestamp"]}
                if item not in ring:
                    ring.append(item)
                ring.sort(key=_ms)
                kept[e["propertyName"]] = ring[-TWIN_HISTORY:]
            pruned = _fit_history(kept, budget)  # entries checked, the whole bounded
            status["twinHistory"] = kept
            return status

        await self._store.modify(key, edit, status=True)
        if pruned:
            self.counters["history_pruned"] += pruned

    async def _record_event(self, node: str, event: dict[str, Any]) -> None:
        meta = event["metadata"]
        key = edgeproto.make_key("events", meta["namespace"], meta["name"])
        try:
            await self._store.create(key, event)
            self.counters["edge_events"] += 1
        except AlreadyExists:
            self.counters["edge_events_resent"] += 1  # the outbox resends until acked
            return
        count = self._events.get(node)
        self._events[node] = count + 1 if count is not None else await self._count_events(node)
        if self._events[node] > self.limits.events_kept:
            await self._prune_events(node)

    async def _node_events(self, node: str) -> list[Record]:
        records, _ = await self._store.list(f"events/{EVENT_NAMESPACE}/{node}.")
        return [r for r in records if _event_node(r) == node]

    async def _count_events(self, node: str) -> int:
        return len(await self._node_events(node))

    async def _prune_events(self, node: str) -> None:
        """Delete the node's oldest events, down to 90% of what it may keep (so
        that the next few events do not each list and prune again). The event
        just written is kept whatever happens here."""
        try:
            events = await self._node_events(node)
            events.sort(key=lambda r: r.create_rev)
            excess = events[: max(0, len(events) - self.limits.events_kept * 9 // 10)]
            deleted = 0

            async def delete(rec: Record) -> None:
                nonlocal deleted
                with contextlib.suppress(NotFound, Conflict):  # gone, or just rewritten
                    await self._store.delete(rec.key, expect_rev=rec.mod_rev)
                    deleted += 1

            async with trio.open_nursery() as nursery:  # together: one commit for the batch
                for rec in excess:
                    nursery.start_soon(delete, rec)
        except StoreError as exc:
            log.warning("node %s: its oldest events not pruned (%s)", node, exc)
            return
        self._events[node] = len(events) - deleted
        self.counters["events_pruned"] += deleted
        log.info(
            "node %s: %d oldest events pruned (keeps %d)", node, deleted, len(events) - deleted
        )

    async def request(self, node: str, sent: Mapping[str, int], msg: Message) -> dict[str, Any]:
        """``request{op: get, res: key}``: a node may read objects in its own view
        (``sent``) only; the body of the response."""
        key = msg.res or ""
        if msg.op in REQUEST_OPS:  # release pieces for an agent upgrade
            return await self.upgrades.request(node, msg)
        if msg.op != "get":
            return {"error": {"code": 400, "message": f"unsupported request op {msg.op!r}"}}
        if key not in sent:
            self.counters["forbidden"] += 1
            return {"error": {"code": 403, "message": f"{key} is not in node {node}'s view"}}
        try:
            rec = await self._store.get(key)
        except NotFound:
            return {"error": {"code": 404, "message": f"{key} not found"}}
        except StoreError as exc:  # e.g. Unavailable: the node asks again when it needs to
            return {"error": {"code": 503, "message": str(exc)}}
        obj = without_managed_fields(rec.value)  # for API clients only, not boards
        return {"object": edgeproto.encode_object(obj), "rev": rec.mod_rev}


def _check_owner(node: str, rec: Record) -> None:
    """A node writes its own Node, and the pods and devices bound to it."""
    resource, _, name = rec.key.split("/", 2)
    if resource == "nodes" and name == node:
        return
    if resource in _NODE_WRITABLE and rec.node == node:
        return
    raise Rejected(403, f"node {node} may not write {rec.key}")


def _ms(item: Any) -> int:
    """The timestamp of a twin history item (0 if it has none readable)."""
    ts = item.get("timestamp") if isinstance(item, dict) else None
    return int(ts) if isinstance(ts, str) and ts.isascii() and ts.isdigit() else 0


def _fit_history(kept: dict[str, Any], budget: int) -> int:
    """Drop the oldest values of ``kept`` (property → values, each list in
    timestamp order) until it takes at most ``budget`` bytes as JSON; how many."""
    size = len(json.dumps(kept, separators=(",", ":"), ensure_ascii=False).encode())
    if size <= budget:
        return 0
    heap = [(_ms(ring[0]), name) for name, ring in kept.items() if ring]
    heapq.heapify(heap)
    dropped = 0
    while size > budget and heap:
        _, name = heapq.heappop(heap)
        item = kept[name].pop(0)
        size -= len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()) + 1
        dropped += 1
        if kept[name]:
            heapq.heappush(heap, (_ms(kept[name][0]), name))
        else:
            del kept[name]
    return dropped


def _event_node(rec: Record) -> str | None:
    """The node an edge event came from (None for other Events)."""
    v = rec.value
    if v.get("reportingComponent") != EVENT_SOURCE:
        return None
    node = v.get("reportingInstance")
    return node if isinstance(node, str) else None


def _checked(obj: dict[str, Any]) -> None:
    """The object a report would leave behind, checked as the API checks what
    it is given (depth, size, JSON, the kind's own rules): ``Invalid`` if not."""
    key = edgeproto.key_of(obj)
    resource, namespace, name = edgeproto.split_key(key)
    validate(edgeproto.resource_by_name(resource), obj, namespace=namespace or None, name=name)
