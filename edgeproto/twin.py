"""Device twin documents as KubeEdge's DeviceTwin keeps them: parse, validate,
merge, and build the MQTT payloads (sans-io: bytes and dataclasses only).

Facts from kubeedge/kubeedge ``edge/pkg/devicetwin`` (``dttype``, ``dtcommon``,
``dtmanager/twin.go``), so device apps and mappers work unchanged:

- A twin property is ``{"expected": {"value", "metadata": {"timestamp"}},
  "actual": {...}, "optional", "metadata": {"type"}, "expected_version":
  {"cloud", "edge"}, "actual_version": {...}}``; values are strings,
  timestamps milliseconds since the epoch.
- Keys match ``^[a-zA-Z0-9-_.,:/@#]{1,128}$``, non-empty values
  ``^[a-zA-Z0-9-_.,:/@#]{1,512}$``; a value must parse as its ``metadata.type``
  (int/integer, float/double, boolean, string/bytes).
- Errors are answered as ``{"event_id", "timestamp", "code", "reason"}`` with
  400 (bad request), 404 (unknown device), 409 (version conflict), 500.
- An edge update bumps the edge version of what it changes; a cloud update
  bumps the cloud version. An update that carries a version older than the
  stored one (either counter) is a conflict (KubeEdge's ``dealVersion``).
- An update is all or nothing: one bad property rejects the message.
- Value timestamps are the edge's clock at the time of the update (edgecore's
  ``ValueMetadata{Timestamp: now}``); a timestamp the device sends is not kept.
- Every property an update gives a value for is listed in its result, changed
  or not (edgecore lists them all). edgeflock writes and re-stamps only what
  changed: an unchanged value keeps the time it was last set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ._errors import EdgeProtoError

__all__ = [
    "BAD_REQUEST",
    "CONFLICT",
    "INTERNAL_ERROR",
    "MAX_PAYLOAD",
    "MAX_PROPERTIES",
    "NOT_FOUND",
    "Merge",
    "PropertyUpdate",
    "TwinError",
    "TwinProperty",
    "TwinUpdate",
    "TwinValue",
    "Version",
    "apply_desired",
    "check_value",
    "delta",
    "delta_message",
    "document_message",
    "encode",
    "error_message",
    "merge_update",
    "parse_base",
    "parse_state",
    "parse_update",
    "property_from_msg",
    "property_from_row",
    "state_message",
    "twin_message",
]

BAD_REQUEST = 400
NOT_FOUND = 404
CONFLICT = 409
INTERNAL_ERROR = 500

MAX_PAYLOAD = 64 * 1024  # bytes of one MQTT message the twin accepts
MAX_PROPERTIES = 256  # properties in one update message
MAX_EVENT_ID = 256

_KEY = re.compile(r"[a-zA-Z0-9\-_.,:/@#]{1,128}")
_VALUE = re.compile(r"[a-zA-Z0-9\-_.,:/@#]{1,512}")
# KubeEdge's value types, plus "stream" (a DeviceModel property type since v1beta1),
# which like "bytes" carries any string.
_TYPES = frozenset(
    {"", "string", "bytes", "stream", "int", "integer", "float", "double", "boolean"}
)

# KubeEdge's own reasons, so logs and apps see the same words.
ERR_UNMARSHAL = "Unmarshal update request body failed, please check the request"
ERR_NO_TWIN = "Update twin error, key:twin does not exist"
ERR_KEY = (
    "The key of twin must only include upper or lowercase letters, number, english, and "
    "special letter - _ . , : / @ # and the length of key should be less than 128 bytes"
)
ERR_DELETE_UNKNOWN = "the request body is wrong"
ERR_NOT_EXISTED = "update rejected due to the device is not existed"
ERR_TYPE = "the value type is not allowed"
ERR_VALUE = (
    "The value of twin must only include upper or lowercase letters, number, english, and "
    "special letter - _ . , : / @ # and the length of value should be less than 512 bytes"
)


class TwinError(EdgeProtoError):
    """A twin request that is answered with a KubeEdge error result."""

    def __init__(self, code: int, reason: str, event_id: str = "") -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason
        self.event_id = event_id


@dataclass(frozen=True, slots=True)
class Version:
    cloud: int = 0
    edge: int = 0

    def older_than(self, other: Version) -> bool:
        """True when ``other`` (the stored version) has seen changes this one has not."""
        return other.cloud > self.cloud or other.edge > self.edge

    def to_msg(self) -> dict[str, int]:
        return {"cloud": self.cloud, "edge": self.edge}


@dataclass(frozen=True, slots=True)
class TwinValue:
    value: str
    timestamp: int = 0  # ms since the epoch

    def to_msg(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value}
        if self.timestamp:
            out["metadata"] = {"timestamp": self.timestamp}
        return out


@dataclass(frozen=True, slots=True)
class TwinProperty:
    """One property of a device's twin as stored."""

    expected: TwinValue | None = None
    actual: TwinValue | None = None
    type: str = "string"
    optional: bool = True
    expected_version: Version | None = None
    actual_version: Version | None = None

    def to_row(self) -> list[Any]:
        """The compact stored form, a JSON array (~60 bytes where the message form
        takes ~140), so a device's properties share fewer SQLite pages:
        ``[expected, expected_ts, actual, actual_ts, type, optional,
        [cloud, edge] | null, [cloud, edge] | null]``."""
        e, a, ev, av = self.expected, self.actual, self.expected_version, self.actual_version
        return [
            None if e is None else e.value,
            0 if e is None else e.timestamp,
            None if a is None else a.value,
            0 if a is None else a.timestamp,
            self.type,
            int(self.optional),
            None if ev is None else [ev.cloud, ev.edge],
            None if av is None else [av.cloud, av.edge],
        ]

    def to_msg(self, *, versions: bool = False) -> dict[str, Any]:
        """KubeEdge's ``MsgTwin`` JSON (empty fields omitted)."""
        out: dict[str, Any] = {}
        if self.expected is not None:
            out["expected"] = self.expected.to_msg()
        if self.actual is not None:
            out["actual"] = self.actual.to_msg()
        out["optional"] = self.optional
        out["metadata"] = {"type": self.type}
        if versions:
            if self.expected_version is not None:
                out["expected_version"] = self.expected_version.to_msg()
            if self.actual_version is not None:
                out["actual_version"] = self.actual_version.to_msg()
        return out


@dataclass(frozen=True, slots=True)
class PropertyUpdate:
    """One property of an update request; ``None`` fields were not given."""

    expected: TwinValue | None = None
    actual: TwinValue | None = None
    type: str | None = None
    optional: bool | None = None
    expected_version: Version | None = None
    actual_version: Version | None = None


@dataclass(frozen=True, slots=True)
class TwinUpdate:
    event_id: str
    timestamp: int
    # A property mapped to None asks to delete it (allowed for optional ones).
    twin: dict[str, PropertyUpdate | None]


@dataclass(frozen=True, slots=True)
class Merge:
    """The outcome of applying an update to a device's twin."""

    twins: dict[str, TwinProperty]  # the whole new twin
    result: dict[str, TwinProperty] = field(default_factory=dict)  # what changed
    document: dict[str, tuple[TwinProperty | None, TwinProperty | None]] = field(
        default_factory=dict
    )  # name -> (last, current)
    expected_changed: frozenset[str] = frozenset()
    actual_changed: frozenset[str] = frozenset()
    deleted: frozenset[str] = frozenset()
    # Properties the update gave a value for, changed or not: the update's result
    # lists them (as edgecore does) and a delta among them is sent again.
    given: frozenset[str] = frozenset()

    def answer(self) -> dict[str, TwinProperty]:
        """What the update's result lists: every changed or given property."""
        return {n: self.twins[n] for n in sorted(self.given | set(self.result)) if n in self.twins}

    @property
    def changed(self) -> bool:
        return bool(self.result or self.deleted)


# ---- parsing -----------------------------------------------------------------------


def _loads(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD:
        raise TwinError(BAD_REQUEST, f"message of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: nested too deep for the parser
        raise TwinError(BAD_REQUEST, ERR_UNMARSHAL) from None
    if not isinstance(obj, dict):
        raise TwinError(BAD_REQUEST, ERR_UNMARSHAL)
    return obj


def _event_id(obj: Mapping[str, Any]) -> str:
    ev = obj.get("event_id", "")
    if ev is None:
        return ""
    if not isinstance(ev, str) or len(ev) > MAX_EVENT_ID:
        raise TwinError(BAD_REQUEST, ERR_UNMARSHAL)
    return ev


def _int(v: Any, what: str, event_id: str) -> int:
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v >= 1 << 63:
        raise TwinError(BAD_REQUEST, f"{what} must be a non-negative integer", event_id)
    return v


def parse_base(payload: bytes, what: str = "twin info") -> tuple[str, int]:
    """``(event_id, timestamp)`` of a request such as twin/get (``what`` "twin
    info") or membership/get ("get membership info"). An unreadable one is
    refused with edgecore's words, ``Unmarshal twin info <payload> failed , err:
    <why>`` (``<why>`` is Python's reason where edgecore prints Go's error value)."""
    try:
        obj = _loads(payload)
        ev = _event_id(obj)
        return ev, _int(obj.get("timestamp"), "timestamp", ev)
    except TwinError as err:
        text = payload[:1024].decode("utf-8", "replace")
        why = err.reason
        if why == ERR_UNMARSHAL:
            try:
                json.loads(payload)
                why = "not a base message (an object with a string event_id)"
            except (ValueError, RecursionError) as exc:
                why = str(exc)
        raise TwinError(BAD_REQUEST, f"Unmarshal {what} {text} failed , err: {why}") from None


def parse_state(payload: bytes) -> tuple[str, str]:
    """``(event_id, state)`` of a state/update request."""
    obj = _loads(payload)
    ev = _event_id(obj)
    state = obj.get("state")
    if not isinstance(state, str) or not _VALUE.fullmatch(state) or len(state) > 64:
        raise TwinError(BAD_REQUEST, "Update state error, state must be a short word", ev)
    return ev, state


def _value(v: Any, event_id: str, strict: bool = True) -> TwinValue | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise TwinError(BAD_REQUEST, ERR_UNMARSHAL, event_id)
    raw = v.get("value")
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise TwinError(BAD_REQUEST, ERR_UNMARSHAL, event_id)
    if raw and strict and not _VALUE.fullmatch(raw):
        raise TwinError(BAD_REQUEST, ERR_VALUE, event_id)
    meta = v.get("metadata")
    ts = 0
    if isinstance(meta, dict):
        ts = _int(meta.get("timestamp"), "metadata.timestamp", event_id)
    elif meta is not None:
        raise TwinError(BAD_REQUEST, ERR_UNMARSHAL, event_id)
    return TwinValue(raw, ts)


def _version(v: Any, event_id: str) -> Version | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise TwinError(BAD_REQUEST, ERR_UNMARSHAL, event_id)
    return Version(
        _int(v.get("cloud"), "version.cloud", event_id),
        _int(v.get("edge"), "version.edge", event_id),
    )


def _property(v: Any, event_id: str, strict: bool = True) -> PropertyUpdate:
    if not isinstance(v, dict):
        raise TwinError(BAD_REQUEST, ERR_UNMARSHAL, event_id)
    meta = v.get("metadata")
    typ: str | None = None
    if isinstance(meta, dict):
        t = meta.get("type")
        if t is not None:
            if not isinstance(t, str) or t not in _TYPES:
                raise TwinError(BAD_REQUEST, ERR_TYPE, event_id)
            typ = t or "string"
    elif meta is not None:
        raise TwinError(BAD_REQUEST, ERR_UNMARSHAL, event_id)
    optional = v.get("optional")
    if optional is not None and not isinstance(optional, bool):
        raise TwinError(BAD_REQUEST, ERR_UNMARSHAL, event_id)
    return PropertyUpdate(
        expected=_value(v.get("expected"), event_id, strict),
        actual=_value(v.get("actual"), event_id, strict),
        type=typ,
        optional=optional,
        expected_version=_version(v.get("expected_version"), event_id),
        actual_version=_version(v.get("actual_version"), event_id),
    )


def parse_update(payload: bytes) -> TwinUpdate:
    """A twin/update request; raises :class:`TwinError` (400) on anything malformed."""
    obj = _loads(payload)
    ev = _event_id(obj)
    ts = _int(obj.get("timestamp"), "timestamp", ev)
    twin = obj.get("twin")
    if not isinstance(twin, dict):
        raise TwinError(BAD_REQUEST, ERR_NO_TWIN, ev)
    if len(twin) > MAX_PROPERTIES:
        raise TwinError(BAD_REQUEST, f"more than {MAX_PROPERTIES} properties in one update", ev)
    props: dict[str, PropertyUpdate | None] = {}
    for key, value in twin.items():
        if not _KEY.fullmatch(key):
            raise TwinError(BAD_REQUEST, ERR_KEY, ev)
        props[key] = None if value is None else _property(value, ev)
    return TwinUpdate(ev, ts, props)


def property_from_row(row: Any) -> TwinProperty:
    """A stored property back from :meth:`TwinProperty.to_row`; :class:`TwinError`
    (500: the store holds something the twin did not write) if the row is not one."""

    def value(v: Any, ts: Any) -> TwinValue | None:
        if v is None:
            return None
        if not isinstance(v, str) or type(ts) is not int:
            raise TwinError(INTERNAL_ERROR, "twin row: a value is a string with an int timestamp")
        return TwinValue(v, ts)

    def version(v: Any) -> Version | None:
        if v is None:
            return None
        if not (isinstance(v, list) and len(v) == 2 and all(type(x) is int for x in v)):
            raise TwinError(INTERNAL_ERROR, "twin row: a version is [cloud, edge]")
        return Version(v[0], v[1])

    if not isinstance(row, list) or len(row) != 8 or not isinstance(row[4], str):
        raise TwinError(INTERNAL_ERROR, "not a twin row")
    return TwinProperty(
        expected=value(row[0], row[1]),
        actual=value(row[2], row[3]),
        type=row[4],
        optional=bool(row[5]),
        expected_version=version(row[6]),
        actual_version=version(row[7]),
    )


def property_from_msg(msg: Mapping[str, Any]) -> TwinProperty:
    """A stored property back from :meth:`TwinProperty.to_msg` (``versions=True``);
    values are not held to the MQTT limits (a cloud desired value may exceed them)."""
    p = _property(dict(msg), "", strict=False)
    return TwinProperty(
        expected=p.expected,
        actual=p.actual,
        type=p.type or "string",
        optional=True if p.optional is None else p.optional,
        expected_version=p.expected_version,
        actual_version=p.actual_version,
    )


# ---- merging -----------------------------------------------------------------------


def check_value(typ: str, value: str) -> str | None:
    """KubeEdge's ``ValidateValue``: None when ``value`` fits ``typ``, else the reason."""
    if typ in ("", "string", "bytes", "stream") or value == "":
        return None
    if typ in ("int", "integer"):
        try:
            int(value, 10)
        except ValueError:
            return "the value is not int or integer"
        return None
    if typ in ("float", "double"):
        try:
            float(value)
        except ValueError:
            return "the value is not float"
        return None
    if typ == "boolean":
        return None if value in ("true", "false") else "the bool value must be true or false"
    return ERR_TYPE


def merge_update(current: Mapping[str, TwinProperty], update: TwinUpdate, now_ms: int) -> Merge:
    """Apply an edge (MQTT) update; raises :class:`TwinError` 400/409, changing nothing."""
    ev = update.event_id
    twins = dict(current)
    result: dict[str, TwinProperty] = {}
    document: dict[str, tuple[TwinProperty | None, TwinProperty | None]] = {}
    exp_changed: set[str] = set()
    act_changed: set[str] = set()
    deleted: set[str] = set()
    given: set[str] = set()
    for name, upd in update.twin.items():
        prev = twins.get(name)
        if upd is None:
            if prev is None:
                raise TwinError(BAD_REQUEST, ERR_DELETE_UNKNOWN, ev)
            if not prev.optional:
                raise TwinError(BAD_REQUEST, f"twin {name} is not optional", ev)
            del twins[name]
            deleted.add(name)
            document[name] = (prev, None)
            continue
        base = prev or TwinProperty()
        typ = upd.type or base.type
        optional = base.optional if upd.optional is None or not base.optional else upd.optional
        # [value, version] of expected and actual, replaced where the update changes them
        sides = {
            "expected": (base.expected, base.expected_version, upd.expected, upd.expected_version),
            "actual": (base.actual, base.actual_version, upd.actual, upd.actual_version),
        }
        out: dict[str, tuple[TwinValue | None, Version | None]] = {}
        for side, (have, stored, val, asked) in sides.items():
            out[side] = (have, stored)
            if val is None:
                continue
            given.add(name)
            reason = check_value(typ, val.value)
            if reason is not None:
                raise TwinError(BAD_REQUEST, reason, ev)
            if asked is not None and stored is not None and asked.older_than(stored):
                raise TwinError(
                    CONFLICT,
                    f"Not allowed to update {side} of {name} due to version conflict "
                    f"(have cloud {stored.cloud} edge {stored.edge}, "
                    f"got cloud {asked.cloud} edge {asked.edge})",
                    ev,
                )
            if have is not None and have.value == val.value:
                continue
            v = stored or Version()
            # The edge's clock, never the device's (edgecore stamps ``now`` too).
            out[side] = (TwinValue(val.value, now_ms), Version(v.cloud, v.edge + 1))
            (exp_changed if side == "expected" else act_changed).add(name)
        new = TwinProperty(
            expected=out["expected"][0],
            actual=out["actual"][0],
            type=typ,
            optional=optional,
            expected_version=out["expected"][1],
            actual_version=out["actual"][1],
        )
        if new != prev:
            twins[name] = new
            result[name] = new
            document[name] = (prev, new)
    return Merge(
        twins,
        result,
        document,
        frozenset(exp_changed),
        frozenset(act_changed),
        frozenset(deleted),
        frozenset(given),
    )


def apply_desired(
    current: Mapping[str, TwinProperty],
    desired: Mapping[str, tuple[str | None, str]],
    now_ms: int,
) -> Merge:
    """Apply the cloud's view: ``name -> (desired value or None, type)`` from the
    Device spec. A new desired value bumps the cloud version of ``expected``;
    properties the spec names appear in the twin even without a desired value."""
    twins = dict(current)
    result: dict[str, TwinProperty] = {}
    document: dict[str, tuple[TwinProperty | None, TwinProperty | None]] = {}
    exp_changed: set[str] = set()
    for name, (value, typ) in desired.items():
        prev = twins.get(name)
        new = replace(prev or TwinProperty(), type=typ or "string")
        if value is not None and (new.expected is None or new.expected.value != value):
            v = new.expected_version or Version()
            new = replace(
                new,
                expected=TwinValue(value, now_ms),
                expected_version=Version(v.cloud + 1, v.edge),
            )
            exp_changed.add(name)
        if new != prev:
            twins[name] = new
            result[name] = new
            document[name] = (prev, new)
    return Merge(twins, result, document, frozenset(exp_changed))


def delta(twins: Mapping[str, TwinProperty]) -> dict[str, str]:
    """Properties whose (non-empty) expected value differs from the actual one."""
    out: dict[str, str] = {}
    for name, p in twins.items():
        want = p.expected.value if p.expected is not None else ""
        if want and want != (p.actual.value if p.actual is not None else ""):
            out[name] = want
    return out


# ---- payloads ----------------------------------------------------------------------


def encode(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def twin_message(event_id: str, now_ms: int, twins: Mapping[str, TwinProperty]) -> dict[str, Any]:
    """twin/update/result (the changed properties) and twin/get/result (all)."""
    return {
        "event_id": event_id,
        "timestamp": now_ms,
        "twin": {k: v.to_msg() for k, v in twins.items()},
    }


def state_message(
    event_id: str, now_ms: int, name: str, state: str, last_online: str
) -> dict[str, Any]:
    """state/update/result: edgecore's ``DeviceMsg`` (``device.lastOnlineTime``,
    empty fields omitted), plus ``last_online`` as edgeflock sent it before."""
    device: dict[str, Any] = {"name": name, "state": state}
    if last_online:
        device["lastOnlineTime"] = last_online
        device["last_online"] = last_online
    return {"event_id": event_id, "timestamp": now_ms, "device": device}


def error_message(event_id: str, now_ms: int, code: int, reason: str) -> dict[str, Any]:
    return {"event_id": event_id, "timestamp": now_ms, "code": code, "reason": reason}


def delta_message(
    event_id: str, now_ms: int, twins: Mapping[str, TwinProperty]
) -> dict[str, Any] | None:
    """twin/update/delta, or None when nothing differs."""
    d = delta(twins)
    return {**twin_message(event_id, now_ms, twins), "delta": d} if d else None


def document_message(
    event_id: str,
    now_ms: int,
    document: Mapping[str, tuple[TwinProperty | None, TwinProperty | None]],
) -> dict[str, Any]:
    """twin/update/document: each changed property's last and current state."""
    return {
        "event_id": event_id,
        "timestamp": now_ms,
        "twin": {
            k: {
                "last": None if last is None else last.to_msg(),
                "current": None if cur is None else cur.to_msg(),
            }
            for k, (last, cur) in document.items()
        },
    }
