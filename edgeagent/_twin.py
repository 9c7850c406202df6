"""DeviceTwin: KubeEdge's device twin in the agent, over the local MQTT bus.

Mappers and device apps talk KubeEdge's topics (``edgeproto.topics``) and
payloads (``edgeproto.twin``). A device is known by KubeEdge's id since 1.16,
``namespace/name``, and addressed in both topic forms: the current
``$hw/events/device/{namespace}/{name}/...`` (KubeEdge 1.17+) and the legacy
``$hw/events/device/{name}/...`` (≤ 1.15), which means the only device of that
name on this node and is refused (400) when two namespaces use the name. A
request is answered (result, document, delta) on the form it came in; the
cloud's pushes (deltas and documents of desired values, the re-sent deltas
after a reconnect) go out on the current form and, for a device the legacy form
can name, on that form too. Membership entries carry ``id: namespace/name``
(as edgecore 1.17+ sends them), ``name`` and ``namespace``.

The twin keeps every device's document in memory
and in the agent's SQLite (tables ``twin`` and ``twin_device`` on the meta
connection); the Device objects themselves (and their DeviceModels) come from
the cloud through the normal sync.

Writes are batched for SD cards: a change marks rows dirty and a flusher
writes everything dirty at most once per ~65 ms window in ONE transaction,
together with the device status reports for the gateway (the outbox row of a
device is coalesced: the latest full twin list wins, so a gateway down for
days costs one row per device).

Nothing is told before it is on disk: every message the twin publishes while
a change is not yet committed (update, state and get results, documents,
deltas, membership) waits for the commit of the batch that holds that change
and goes out when it commits. A crash before the commit loses updates that no
device was told were accepted (it resends them). When the commit fails (a
full disk), each waiting request is answered with KubeEdge's error result,
code 500; the changes stay in memory and are written when the store takes them
again; pushes (documents, deltas) wait for that commit.

Cloud → edge: a Device's ``spec.properties[].desired.value`` becomes the
twin's expected value (cloud version bumped) and, when it differs from the
actual value, a ``twin/update/delta`` to the device. Outstanding deltas are
re-sent after every (re)connect of the broker. Edge → cloud: actual values go
up as ``status.twins[].reported``; an expected value set at the edge goes up as
a ``desired`` report that the gateway applies to the Device's spec.

Bounded history (optional, per device): the annotation
``twin.edgeflock.io/history: "temperature=100,humidity=10"`` asks that, besides
the latest value, the last N reported values of each named property are kept
while offline and delivered: each reported value becomes a ``twin-history``
report keyed ``devices/NS/NAME#h<property>.<seq mod N>`` (body ``{"history":
[{"propertyName", "value", "timestamp"}]}``). The keys form a ring of N outbox
rows per property, so the newest N values wait and older ones are overwritten.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import apsw
import cbor2
import trio

import edgeproto
from edgeproto import topics
from edgeproto import twin as tw
from edgeproto.twin import TwinError, TwinProperty

from ._config import AgentConfig
from ._meta import Meta, MetaError
from ._upload import Uploads

log = logging.getLogger(__name__)

_RETRY_FIRST, _RETRY_MAX = 0.5, 30.0  # a failed flush (full disk) is retried

__all__ = ["HISTORY_ANNOTATION", "DeviceTwin", "edge_bus_modules"]

HISTORY_ANNOTATION = "twin.edgeflock.io/history"
HISTORY_CAP = 1000  # per property, whatever the annotation asks

_SCHEMA = """
CREATE TABLE IF NOT EXISTS twin(
    device TEXT NOT NULL, -- namespace/name (a bare name before 1.17 topics)
    name TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY(device, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS twin_device(
    device TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    last_online TEXT NOT NULL
) WITHOUT ROWID;
"""

Publish = Callable[[str, bytes, int], bool]  # (topic, payload, qos)
Outbox = list[tuple[str, str, bytes, bool]]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Device:
    key: str  # devices/NS/NAME
    namespace: str
    name: str
    id: str  # NS/NAME, KubeEdge's device id
    spec: dict[str, Any]
    model: dict[str, Any] | None
    desired: dict[str, tuple[str | None, str]]  # property -> (desired value, type)
    no_report: frozenset[str]  # properties with reportToCloud: false
    history: dict[str, int]  # property -> how many past values to keep
    fingerprint: str

    def member(self, twins: dict[str, TwinProperty], state: tuple[str, str]) -> dict[str, Any]:
        """The membership entry (KubeEdge's ``Device`` plus edgeflock's spec/model)."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "namespace": self.namespace,
            "description": "",
            "state": state[0] or "unknown",
            "twin": {k: v.to_msg() for k, v in twins.items()},
            "spec": self.spec,
            "model": self.model,
        }
        if state[1]:
            out["last_online"] = state[1]
        return out


def _device_from(
    key: str, obj: dict[str, Any], models: dict[str, dict[str, Any]]
) -> _Device | None:
    try:
        _, ns, name = edgeproto.split_key(key)
    except edgeproto.ProtocolError:
        return None
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    ref = spec.get("deviceModelRef")
    model_obj = None
    if isinstance(ref, dict) and isinstance(ref.get("name"), str):
        model_obj = models.get(edgeproto.make_key("devicemodels", ns, ref["name"]))
    model = model_obj.get("spec") if isinstance(model_obj, dict) else None
    types: dict[str, str] = {}
    if isinstance(model, dict):
        for p in model.get("properties") or []:
            if isinstance(p, dict) and isinstance(p.get("name"), str):
                t = p.get("type")
                types[p["name"]] = t.lower() if isinstance(t, str) else "string"
    desired: dict[str, tuple[str | None, str]] = {}
    no_report: set[str] = set()
    for p in spec.get("properties") or []:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            continue
        d = p.get("desired")
        value = d.get("value") if isinstance(d, dict) else None
        typ = types.get(p["name"], "string")
        desired[p["name"]] = (value if isinstance(value, str) else None, _twin_type(typ))
        if p.get("reportToCloud") is False:
            no_report.add(p["name"])
    history: dict[str, int] = {}
    ann = (obj.get("metadata") or {}).get("annotations") or {}
    raw = ann.get(HISTORY_ANNOTATION) if isinstance(ann, dict) else None
    if isinstance(raw, str):
        for part in raw.split(","):
            prop, _, n = part.strip().partition("=")
            if prop and n.isdigit() and int(n) > 0:
                history[prop] = min(int(n), HISTORY_CAP)
    fingerprint = json.dumps([spec, model], sort_keys=True, default=str)
    return _Device(
        key,
        ns,
        name,
        topics.device_id(ns, name),
        spec,
        model,
        desired,
        frozenset(no_report),
        history,
        fingerprint,
    )


def _twin_type(model_type: str) -> str:
    """A DeviceModel property type as a twin metadata type KubeEdge validates."""
    known = ("int", "float", "double", "boolean", "bytes", "stream")
    return model_type if model_type in known else "string"


class _Waiting(NamedTuple):
    """A message waiting for a commit."""

    topic: str
    payload: bytes
    qos: int
    # The event id when it answers a request: answered with an error instead if
    # the commit fails. None for a push: it waits for the next commit.
    request: str | None = None
    refusal: bool = False  # an error result already: sent as it is either way


@dataclass
class _Pending:
    """What the next flush writes."""

    rows: set[tuple[str, str]] = field(default_factory=set)  # (device, property) upserts/deletes
    states: set[str] = field(default_factory=set)
    reports: set[str] = field(default_factory=set)  # devices whose status goes up
    desired: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    history: dict[tuple[str, str, int], tuple[str, int]] = field(default_factory=dict)
    purge: set[str] = field(default_factory=set)  # devices whose rows all go
    uploads: list[tuple[str, Any, int]] = field(default_factory=list)  # taken from Uploads
    answers: list[_Waiting] = field(default_factory=list)  # published once this commits

    def __bool__(self) -> bool:
        """Something to write (answers alone write nothing)."""
        return bool(
            self.rows
            or self.states
            or self.reports
            or self.desired
            or self.history
            or self.purge
            or self.uploads
        )


class DeviceTwin:
    # 65 ms: at 100 updates/s a window holds ~6 updates (under 1 KB written per
    # update with 512-byte pages) and p99 publish-to-cloud latency stays ~80 ms.
    def __init__(self, config: AgentConfig, meta: Meta, *, flush_interval: float = 0.065) -> None:
        self._cfg = config
        self._meta = meta
        self._interval = flush_interval
        self._publish: Publish = lambda topic, payload, qos: False
        self._devices: dict[str, _Device] = {}  # by id, namespace/name
        self._by_name: dict[str, list[str]] = defaultdict(list)  # name -> ids
        self._twins: dict[str, dict[str, TwinProperty]] = {}
        self._states: dict[str, tuple[str, str]] = {}
        self._observed: dict[tuple[str, str], str] = {}  # desired known when reported
        self._history_seq: dict[tuple[str, str], int] = {}
        self._pending = _Pending()
        self._saving = False  # a batch is being committed
        self._dirty = trio.Event()
        self._flushed = trio.Event()  # set after every commit (or failed attempt)
        self.counters: Counter[str] = Counter()
        # The EventBus's statistics (MQTT in/out), set by edge_bus_modules.
        self.bus_statistics: Callable[[], dict[str, Any]] | None = None
        # Events for the cloud share the twin's write batches (one transaction).
        self.uploads = Uploads(config.node, self.counters, self._mark)

    def attach(self, publish: Publish) -> None:
        self._publish = publish

    def routes(self) -> dict[str, Callable[[str, bytes], None]]:
        """Receivers for every subscription of :data:`edgeproto.topics.SUBSCRIPTIONS`."""
        node = topics.NODE_PREFIX + "+"
        routes: dict[str, Callable[[str, bytes], None]] = {**self.uploads.routes()}
        for dev in (topics.CURRENT, topics.LEGACY):  # both forms, one receiver each
            routes[dev + topics.STATE_UPDATE] = self._on_state_update
            routes[dev + topics.TWIN_UPDATE] = self._on_twin_update
            routes[dev + topics.TWIN_GET] = self._on_twin_get
            routes[dev + topics.TWIN_CLOUD_UPDATED] = self._on_cloud_updated
        routes[node + topics.MEMBERSHIP_GET] = self._on_membership
        routes[node + topics.MEMBERSHIP_DETAIL] = self._on_membership
        return routes

    def statistics(self) -> dict[str, int]:
        return dict(self.counters)

    def twin(self, device: str) -> dict[str, TwinProperty]:
        """The twin of a device by id (``namespace/name``) or by a name that is
        unique on this node; empty for an unknown one."""
        try:
            return dict(self._twins.get(self.resolve(device), {}))
        except TwinError:
            return {}

    def resolve(self, device: str) -> str:
        """The id (``namespace/name``) of a device addressed by id or, in KubeEdge's
        legacy form, by its bare name; :class:`TwinError` 404 for an unknown one,
        400 for a name that two namespaces of this node use."""
        if "/" in device:
            if device not in self._devices:
                raise TwinError(tw.NOT_FOUND, tw.ERR_NOT_EXISTED)
            return device
        ids = self._by_name.get(device, [])
        if not ids:
            raise TwinError(tw.NOT_FOUND, tw.ERR_NOT_EXISTED)
        if len(ids) > 1:
            raise TwinError(
                tw.BAD_REQUEST,
                f"device name {device} is used in namespaces "
                f"{', '.join(sorted(i.partition('/')[0] for i in ids))} of this node: "
                f"address it as {topics.DEVICE_PREFIX}{{namespace}}/{device}/...",
            )
        return ids[0]

    async def wait_flushed(self) -> None:
        """Wait until every change made so far is committed and every message
        that waited for it is published."""
        while self._pending or self._pending.answers or self._saving or self.uploads:
            await self._flushed.wait()

    # ---- the service ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._pending = _Pending()
        await self._load()
        gen = self._meta.generation
        await self._sync_devices(announce=False)
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flusher)
            while True:
                gen = await self._meta.wait_changed(gen)
                await self._sync_devices(announce=True)

    async def _load(self) -> None:
        def load(conn: apsw.Connection) -> Outbox:
            conn.execute(_SCHEMA)
            twins: dict[str, dict[str, TwinProperty]] = defaultdict(dict)
            for dev, name, data in conn.execute("SELECT device, name, data FROM twin"):
                try:
                    stored = json.loads(str(data))
                    twins[str(dev)][str(name)] = (
                        tw.property_from_row(stored)
                        if isinstance(stored, list)
                        else tw.property_from_msg(stored)  # written before rows were compact
                    )
                except (ValueError, TwinError):
                    log.warning("twin: dropping unreadable row %s/%s", dev, name)
            states = {
                str(d): (str(s), str(t))
                for d, s, t in conn.execute("SELECT device, state, last_online FROM twin_device")
            }
            loaded.append((dict(twins), states))
            return []

        loaded: list[tuple[dict[str, dict[str, TwinProperty]], dict[str, tuple[str, str]]]] = []
        await self._meta.transact(load)
        self._twins, self._states = loaded[0]
        self._observed = {
            (d, p): prop.expected.value
            for d, props in self._twins.items()
            for p, prop in props.items()
            if prop.expected is not None
        }

    async def _sync_devices(self, *, announce: bool) -> None:
        """Follow the Device objects of this node's view: desired values, membership."""
        models = dict(await self._meta.list_objects("devicemodels"))
        new: dict[str, _Device] = {}
        for key, obj in await self._meta.list_objects("devices"):
            d = _device_from(key, obj, models)
            if d is None:
                continue
            new[d.id] = d
        old = self._devices
        self._devices = new
        self._by_name = defaultdict(list)
        for d in new.values():
            self._by_name[d.name].append(d.id)
        now = _now_ms()
        added = [d for n, d in new.items() if n not in old or old[n].fingerprint != d.fingerprint]
        removed = [d for n, d in old.items() if n not in new]
        if not announce:
            self._adopt_legacy_rows()
            # start-up: forget twins of devices the cloud removed meanwhile
            removed = [
                _Device(k, "", k, k, {}, None, {}, frozenset(), {}, "")
                for k in set(self._twins) | set(self._states)
                if k not in new
            ]
        for d in removed:
            self._twins.pop(d.id, None)
            self._states.pop(d.id, None)
            self._observed = {k: v for k, v in self._observed.items() if k[0] != d.id}
            self._pending.purge.add(d.id)
        for d in new.values():
            cur = self._twins.get(d.id, {})
            merge = tw.apply_desired(cur, d.desired, now)
            if not merge.changed:
                continue
            self._twins[d.id] = merge.twins
            self._pending.rows.update((d.id, p) for p in merge.result)
            if merge.expected_changed:
                self.counters["cloud_desired"] += len(merge.expected_changed)
                ev = f"cloud-{now}"
                self._push(
                    d.id,
                    topics.TWIN_UPDATE_DOCUMENT,
                    tw.document_message(ev, now, merge.document),
                )
                msg = tw.delta_message(ev, now, merge.twins)
                if msg is not None:
                    self._push(d.id, topics.TWIN_UPDATE_DELTA, msg)
        self._mark()
        if announce and (added or removed):
            ev = f"membership-{now}"
            body = {
                "event_id": ev,
                "timestamp": now,
                "added_devices": [
                    d.member(self._twins.get(d.id, {}), self._states.get(d.id, ("", "")))
                    for d in added
                ],
                "removed_devices": [
                    {"id": d.id, "name": d.name, "namespace": d.namespace} for d in removed
                ],
            }
            topic = topics.membership_topic(self._cfg.node, topics.MEMBERSHIP_UPDATED)
            self._emit(_Waiting(topic, tw.encode(body), 1))

    def on_broker_connected(self) -> None:
        """Re-send every outstanding delta (a mapper may have missed them)."""
        now = _now_ms()
        for dev in self._devices:
            msg = tw.delta_message(f"reconnect-{now}", now, self._twins.get(dev, {}))
            if msg is not None:
                self._push(dev, topics.TWIN_UPDATE_DELTA, msg)

    def _adopt_legacy_rows(self) -> None:
        """Start-up: rows written before devices were known as ``namespace/name``
        (keyed by the bare name) move to the id of the only device of that name;
        with none or several, they are forgotten like a removed device's."""
        for old in [k for k in set(self._twins) | set(self._states) if "/" not in k]:
            ids = self._by_name.get(old, [])
            if len(ids) != 1 or ids[0] in self._twins or ids[0] in self._states:
                continue
            dev = ids[0]
            if old in self._twins:
                self._twins[dev] = self._twins.pop(old)
                self._pending.rows.update((dev, p) for p in self._twins[dev])
            if old in self._states:
                self._states[dev] = self._states.pop(old)
                self._pending.states.add(dev)
            self._observed = {
                (dev if d == old else d, p): v for (d, p), v in self._observed.items()
            }
            self._pending.purge.add(old)
            log.info("twin: device %s is now kept as %s", old, dev)

    # ---- persistence -------------------------------------------------------------

    def _mark(self) -> None:
        if self._pending or self._pending.answers or self.uploads:
            self._dirty.set()

    def _emit(self, msg: _Waiting) -> None:
        """Publish now when everything the twin holds is on disk; else with the
        commit of the next batch."""
        if self._pending or self._saving:
            self._pending.answers.append(msg)
            self._dirty.set()
        else:
            self._publish(msg.topic, msg.payload, msg.qos)

    def _answer_batch(self, answers: list[_Waiting], error: str | None) -> None:
        """The batch committed (``error`` None) or failed: send what waited on it.
        On failure a request is answered as edgecore answers a twin update whose
        database write failed: KubeEdge's error result, code 500."""
        for msg in answers:
            if error is None or msg.refusal:
                self._publish(msg.topic, msg.payload, msg.qos)
            elif msg.request is not None:
                reason = f"Update device twin failed due to writing sql error: {error}"
                body = tw.error_message(msg.request, _now_ms(), tw.INTERNAL_ERROR, reason)
                self._publish(msg.topic, tw.encode(body), msg.qos)
            else:
                self._pending.answers.append(msg)

    async def _flusher(self) -> None:
        # At most one transaction per window: a change after a quiet spell is
        # written at once, changes during a window wait for its end together.
        last = -float("inf")
        retry = _RETRY_FIRST
        while True:
            await self._dirty.wait()
            wait = last + self._interval - trio.current_time()
            if wait > 0:
                await trio.sleep(wait)
            last = trio.current_time()
            self._dirty = trio.Event()
            pending, self._pending = self._pending, _Pending()
            pending.uploads = self.uploads.take()
            self._saving = True
            try:
                if pending or pending.uploads:
                    await self._flush(pending)
            except MetaError as exc:
                # A full disk, most likely. Nothing is lost: what could not be
                # written stays in memory (merged with what comes meanwhile)
                # and is written when the store takes it again. Requests that
                # waited for this commit are answered with an error now.
                self._saving = False
                self._restore(pending)
                self._answer_batch(pending.answers, str(exc))
                self.counters["flush_failures"] += 1
                self._flushed.set()
                self._flushed = trio.Event()
                log.warning("twin: cannot write (%s); retrying in %.1f s", exc, retry)
                await trio.sleep(retry)
                retry = min(retry * 2, _RETRY_MAX)
                self._dirty.set()
                continue
            except BaseException:
                self._saving = False
                self._restore(pending)
                raise
            self._saving = False
            self._answer_batch(pending.answers, None)
            if not self._pending and self._pending.answers:
                # Waited only for this commit (they came while it ran): out now.
                self._answer_batch(self._pending.answers, None)
                self._pending.answers = []
            retry = _RETRY_FIRST
            self._flushed.set()
            self._flushed = trio.Event()

    def _restore(self, p: _Pending) -> None:
        q = self._pending
        q.rows |= p.rows
        q.states |= p.states
        q.reports |= p.reports
        q.purge |= p.purge
        for d, v in p.desired.items():
            q.desired[d] = {**v, **q.desired.get(d, {})}
        q.history = {**p.history, **q.history}
        self.uploads.restore(p.uploads)

    async def _flush(self, p: _Pending) -> None:
        upserts: list[tuple[str, str, str]] = []
        deletes: list[tuple[str, str]] = []
        for dev, prop in p.rows:
            if dev in p.purge and dev not in self._devices:
                continue
            cur = self._twins.get(dev, {}).get(prop)
            if cur is None:
                deletes.append((dev, prop))
            else:
                upserts.append((dev, prop, json.dumps(cur.to_row(), separators=(",", ":"))))
        states = [(d, *self._states[d]) for d in p.states if d in self._states]
        purge = [(d,) for d in p.purge if d not in self._devices]
        items: Outbox = []
        for dev in p.reports:
            d = self._devices.get(dev)
            if d is not None:
                items.append((d.key, "status", cbor2.dumps({"status": self._status(d)}), True))
        for dev, want in p.desired.items():
            d = self._devices.get(dev)
            if d is not None and want:
                items.append((f"{d.key}#desired", "desired", cbor2.dumps({"desired": want}), True))
        for (dev, prop, slot), (value, ts) in p.history.items():
            d = self._devices.get(dev)
            if d is not None:
                entry = {"propertyName": prop, "value": value, "timestamp": str(ts)}
                body = cbor2.dumps({"history": [entry]})
                items.append((f"{d.key}#h{prop}.{slot}", "twin-history", body, True))
        items += self.uploads.outbox(p.uploads)

        def write(conn: apsw.Connection) -> Outbox:
            if upserts:
                conn.executemany(
                    "INSERT INTO twin(device, name, data) VALUES(?, ?, ?) "
                    "ON CONFLICT(device, name) DO UPDATE SET data=excluded.data",
                    upserts,
                )
            if deletes:
                conn.executemany("DELETE FROM twin WHERE device=? AND name=?", deletes)
            if states:
                conn.executemany(
                    "INSERT INTO twin_device(device, state, last_online) VALUES(?, ?, ?) "
                    "ON CONFLICT(device) DO UPDATE SET state=excluded.state, "
                    "last_online=excluded.last_online",
                    states,
                )
            if purge:
                conn.executemany("DELETE FROM twin WHERE device=?", purge)
                conn.executemany("DELETE FROM twin_device WHERE device=?", purge)
            return items

        began = trio.current_time()
        await self._meta.transact(write)
        took = trio.current_time() - began
        if took > 0.1:
            self.counters["slow_flushes"] += 1
            log.debug("twin: flush took %.0f ms", took * 1000)
        self.counters["flushes"] += 1
        self.counters["reports"] += len(items)

    def _status(self, d: _Device) -> dict[str, Any]:
        twins: list[dict[str, Any]] = []
        for prop, p in sorted(self._twins.get(d.id, {}).items()):
            if p.actual is None or prop in d.no_report:
                continue
            entry: dict[str, Any] = {
                "propertyName": prop,
                "reported": {
                    "value": p.actual.value,
                    "metadata": {"timestamp": str(p.actual.timestamp), "type": p.type},
                },
            }
            observed = self._observed.get((d.id, prop))
            if observed is not None:
                meta = {"type": p.type}
                if p.expected is not None and p.expected.value == observed:
                    meta["timestamp"] = str(p.expected.timestamp)
                entry["observedDesired"] = {"value": observed, "metadata": meta}
            twins.append(entry)
        status: dict[str, Any] = {"twins": twins}
        state, last_online = self._states.get(d.id, ("", ""))
        if state:
            status["state"] = state
        if last_online:
            status["lastOnlineTime"] = last_online
        return status

    # ---- MQTT receivers (trio thread, must not block) --------------------------------

    def _send(
        self,
        addr: str,
        suffix: str,
        body: dict[str, Any],
        *,
        request: str | None = None,
        refusal: bool = False,
    ) -> None:
        """``body`` to ``$hw/events/device/{addr}{suffix}`` once what it shows is
        on disk. ``addr`` is the device as the request named it (``namespace/name``
        or a bare name). ``request`` (its event id) makes it the answer to a
        request, answered with an error instead when the commit fails (unless it
        is a ``refusal`` already)."""
        self._publish_at(topics.device_topic(addr, suffix), suffix, body, request, refusal)

    def _publish_at(
        self,
        topic: str,
        suffix: str,
        body: dict[str, Any],
        request: str | None = None,
        refusal: bool = False,
    ) -> None:
        # Answers are QoS 0 (KubeEdge's default; a client that is gone misses them
        # anyway); deltas are QoS 1 and wait in paho's queue across a reconnect.
        qos = 1 if suffix == topics.TWIN_UPDATE_DELTA else 0
        self._emit(_Waiting(topic, tw.encode(body), qos, request, refusal))

    def _push(self, dev: str, suffix: str, body: dict[str, Any]) -> None:
        """A push no request asked for (the cloud's desired values): on the current
        form, and on the legacy one too while the bare name means this device."""
        self._send(dev, suffix, body)
        d = self._devices.get(dev)
        if d is not None and self._by_name.get(d.name) == [dev]:
            self._send(d.name, suffix, body)

    def _fail(self, addr: str, suffix: str, what: str, err: TwinError) -> None:
        self.counters[f"{what}_{err.code}"] += 1
        log.debug("twin: %s of %s rejected: %s", what, addr, err)
        body = tw.error_message(err.event_id, _now_ms(), err.code, err.reason)
        self._send(addr, suffix, body, request=err.event_id, refusal=True)

    def _addressed(self, topic: str) -> str:
        parsed = topics.parse_device_topic(topic)
        return parsed.device if parsed else ""

    def _lookup(self, addr: str, event_id: str, not_found: str) -> str:
        """The device id ``addr`` names; TwinError 404 (``not_found``) or 400."""
        try:
            return self.resolve(addr)
        except TwinError as err:
            reason = not_found if err.code == tw.NOT_FOUND else err.reason
            raise TwinError(err.code, reason, event_id) from None

    def _on_twin_update(self, topic: str, payload: bytes) -> None:
        addr = self._addressed(topic)
        now = _now_ms()
        try:
            update = tw.parse_update(payload)
        except TwinError as err:
            # edgecore answers a request it cannot read on an empty device id.
            self.counters[f"twin_update_{err.code}"] += 1
            log.debug("twin: update of %s unreadable: %s", addr, err)
            body = tw.error_message(err.event_id, now, err.code, err.reason)
            self._publish_at(
                topics.UNADDRESSED_UPDATE_RESULT,
                topics.TWIN_UPDATE_RESULT,
                body,
                err.event_id,
                refusal=True,
            )
            return
        try:
            self.update(addr, update)
        except TwinError as err:
            self._fail(addr, topics.TWIN_UPDATE_RESULT, "twin_update", err)

    def update(self, addr: str, update: tw.TwinUpdate) -> None:
        """Apply a twin update to the device ``addr`` names (``namespace/name`` or
        a bare name), from MQTT or from a DMI mapper: stored, reported to the
        cloud and answered on the bus alike. Raises :class:`TwinError` (404
        unknown device, 400/409 from the merge), changing nothing then."""
        now = _now_ms()
        dev = self._lookup(addr, update.event_id, tw.ERR_NOT_EXISTED)
        merge = tw.merge_update(self._twins.get(dev, {}), update, now)
        self.counters["twin_updates"] += 1
        self._twins[dev] = merge.twins
        p = self._pending
        p.rows.update((dev, name) for name in merge.result)
        p.rows.update((dev, name) for name in merge.deleted)
        d = self._devices[dev]
        for name in merge.actual_changed:
            prop = merge.twins[name]
            self._observed[(dev, name)] = prop.expected.value if prop.expected else ""
            keep = d.history.get(name)
            if keep and prop.actual is not None:
                seq = self._history_seq[(dev, name)] = self._history_seq.get((dev, name), -1) + 1
                p.history[(dev, name, seq % keep)] = (prop.actual.value, prop.actual.timestamp)
        if merge.actual_changed or merge.deleted:
            p.reports.add(dev)
        for name in merge.expected_changed:
            exp = merge.twins[name].expected
            if exp is not None:
                p.desired[dev][name] = exp.value
        self._mark()
        self._send(
            addr,
            topics.TWIN_UPDATE_RESULT,
            tw.twin_message(update.event_id, now, merge.answer()),
            request=update.event_id,
        )
        if merge.changed:
            self._send(
                addr,
                topics.TWIN_UPDATE_DOCUMENT,
                tw.document_message(update.event_id, now, merge.document),
            )
        # The delta goes out when this update changed something or named a
        # property that still differs from its desired value (a device that
        # reports a stale value again is told the desired one again).
        msg = tw.delta_message(update.event_id, now, merge.twins)
        if msg is not None and (merge.changed or merge.given & set(msg["delta"])):
            self._send(addr, topics.TWIN_UPDATE_DELTA, msg)

    def _on_twin_get(self, topic: str, payload: bytes) -> None:
        addr = self._addressed(topic)
        now = _now_ms()
        try:
            ev, _ = tw.parse_base(payload)
            dev = self._lookup(addr, ev, f"Device {addr} not found while getting twin")
        except TwinError as err:
            self._fail(addr, topics.TWIN_GET_RESULT, "twin_get", err)
            return
        self.counters["twin_gets"] += 1
        body = tw.twin_message(ev, now, self._twins.get(dev, {}))
        self._send(addr, topics.TWIN_GET_RESULT, body, request=ev)

    def _on_state_update(self, topic: str, payload: bytes) -> None:
        addr = self._addressed(topic)
        try:
            ev, state = tw.parse_state(payload)
            self.set_state(addr, state, ev)
        except TwinError as err:
            self._fail(addr, topics.STATE_UPDATE_RESULT, "state_update", err)

    def set_state(self, addr: str, state: str, ev: str = "") -> None:
        """The device ``addr`` names is ``state`` ("online", "offline"...), from
        MQTT or DMI. Raises :class:`TwinError` 404 for a device not on this node."""
        now = _now_ms()
        dev = self._lookup(addr, ev, f"Device {addr} not found while updating state")
        self.counters["state_updates"] += 1
        old = self._states.get(dev, ("", ""))
        # edgecore counts "ok" as online too (dtmanager/device.go).
        online = state.lower() in ("online", "ok")
        last_online = edgeproto.rfc3339(now / 1000) if online else old[1]
        if (state, last_online) != old:
            self._states[dev] = (state, last_online)
            self._pending.states.add(dev)
            self._pending.reports.add(dev)
            self._mark()
        body = tw.state_message(ev, now, self._devices[dev].name, state, last_online)
        self._send(addr, topics.STATE_UPDATE_RESULT, body, request=ev)

    def _on_membership(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse_node_topic(topic)
        if parsed is None or parsed[0] != self._cfg.node:
            self.counters["membership_other_node"] += 1
            return
        node, suffix = parsed
        result = (
            topics.MEMBERSHIP_GET_RESULT
            if suffix == topics.MEMBERSHIP_GET
            else topics.MEMBERSHIP_DETAIL_RESULT
        )
        now = _now_ms()
        topic = topics.membership_topic(node, result)
        try:
            ev, _ = tw.parse_base(payload, "get membership info")
        except TwinError as err:
            self.counters[f"membership_{err.code}"] += 1
            body = tw.error_message(err.event_id, now, err.code, err.reason)
            self._emit(_Waiting(topic, tw.encode(body), 0, err.event_id, refusal=True))
            return
        self.counters["membership_gets"] += 1
        devices = [
            d.member(self._twins.get(n, {}), self._states.get(n, ("", "")))
            for n, d in sorted(self._devices.items())
        ]
        body = {"event_id": ev, "timestamp": now, "devices": devices}
        self._emit(_Waiting(topic, tw.encode(body), 0, ev))

    def _on_cloud_updated(self, topic: str, payload: bytes) -> None:
        # KubeEdge's cloud sync topic: in edgeflock cloud changes arrive through the
        # gateway's sync, never from the local bus.
        self.counters["cloud_updated_ignored"] += 1


def edge_bus_modules(
    config: AgentConfig, meta: Meta, twin: DeviceTwin | None = None
) -> list[tuple[str, Callable[..., Any]]]:
    """The twin (``twin``, else a new one) and the EventBus that feeds it, in start
    order (twin first: it has loaded its state before the first message arrives)."""
    from ._eventbus import EventBus
    from ._mqttauth import bus_auth

    assert config.mqtt is not None
    twin = twin or DeviceTwin(config, meta)
    auth, login = bus_auth(config, meta)  # with mqtt_auth: the broker's files, then a login
    bus = EventBus(config.mqtt, f"edgeflock-{config.node}", twin.routes(), **login)
    twin.attach(bus.publish)
    twin.bus_statistics = bus.statistics  # for the agent's /metrics
    bus.add_on_connect(twin.on_broker_connected)
    return [("twin", twin.run), *auth, ("eventbus", bus.run)]
