"""Shapes of what nodes report, checked before anything is read or written.

Pure: no I/O. A report is input from a peer and gets the same strictness as
API input: JSON-shaped values only (string keys, finite numbers, no bytes),
nested at most ``MAX_DEPTH`` deep, and the status fields the gateway and
``kubectl`` read must have the types they are read as. Everything wrong raises
``ProtocolError`` (code ``bad-field``), answered 400 by the hub.
"""

from __future__ import annotations

import json
import math
from typing import Any

from edgeproto import ProtocolError
from edgeproto.upgrade import UpgradeReport, parse_report

from ._validate import MAX_DEPTH

__all__ = [
    "MAX_HISTORY_ENTRIES",
    "MAX_STATUS_BYTES",
    "MAX_TIMESTAMP_DIGITS",
    "MAX_VALUE",
    "check_json",
    "check_status",
    "desired_values",
    "history_entries",
    "upgrade_report",
]

MAX_STATUS_BYTES = 256 * 1024  # a reported status as JSON (a pod's or node's are ~2 KiB)
MAX_VALUE = 4096  # characters of one twin value (the API's limit for desired values)
MAX_NAME = 128  # characters of a property name (the API's limit)
MAX_HISTORY_ENTRIES = 1000  # entries in one twin-history report
MAX_TIMESTAMP_DIGITS = 15  # a ms timestamp: 13 digits until the year 2286
_POD_PHASES = frozenset({"Pending", "Running", "Succeeded", "Failed", "Unknown"})
_INT64 = 1 << 63


def _bad(message: str) -> ProtocolError:
    return ProtocolError(message, code="bad-field")


def check_json(value: Any, what: str) -> None:
    """``value`` is what JSON can hold and ``MAX_DEPTH`` deep at most."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if v is None or isinstance(v, bool | str):
            continue
        if isinstance(v, int):
            if not -_INT64 <= v < _INT64:
                raise _bad(f"{what}: an integer out of the 64-bit range")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise _bad(f"{what}: a number that is not finite")
        elif isinstance(v, dict | list):
            if depth > MAX_DEPTH:
                raise _bad(f"{what}: nested deeper than {MAX_DEPTH}")
            if isinstance(v, dict):
                if not all(isinstance(k, str) for k in v):
                    raise _bad(f"{what}: a map key that is not a string")
                stack.extend((c, depth + 1) for c in v.values())
            else:
                stack.extend((c, depth + 1) for c in v)
        else:
            raise _bad(f"{what}: a {type(v).__name__} value (JSON values only)")


def _string(obj: dict[str, Any], field: str, where: str, *, required: bool = False) -> None:
    v = obj.get(field)
    if v is None and not required:
        return
    if not isinstance(v, str) or (required and not v):
        raise _bad(f"{where}.{field} must be a{' non-empty' if required else ''} string")


def _maps(status: dict[str, Any], field: str, required: tuple[str, ...] = ()) -> list[Any]:
    """``status[field]``: absent, or a list of maps each with ``required`` strings."""
    items = status.get(field)
    if items is None:
        return []
    if not isinstance(items, list):
        raise _bad(f"status.{field} must be a list")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _bad(f"status.{field}[{i}] must be a map")
        for f in required:
            _string(item, f, f"status.{field}[{i}]", required=True)
    return items


def _string_map(status: dict[str, Any], field: str) -> None:
    v = status.get(field)
    if v is None:
        return
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise _bad(f"status.{field} must map names to strings")


def check_status(resource: str, status: Any) -> dict[str, Any]:
    """A board's ``status`` of a ``resource`` object, checked; returned as is."""
    if not isinstance(status, dict):
        raise _bad("a status report needs a status map")
    check_json(status, "status")
    try:
        size = len(json.dumps(status, separators=(",", ":"), ensure_ascii=False).encode())
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError: a lone surrogate
        raise _bad(f"status is not representable as JSON: {exc}") from None
    if size > MAX_STATUS_BYTES:
        raise _bad(f"status is {size} bytes; the limit is {MAX_STATUS_BYTES}")
    for f in ("phase", "reason", "message", "state", "lastOnlineTime", "podIP", "hostIP"):
        _string(status, f, "status")
    _maps(status, "conditions", ("type", "status"))
    if resource == "nodes":
        _string_map(status, "capacity")
        _string_map(status, "allocatable")
        _string_map(status, "nodeInfo")
        _maps(status, "addresses", ("type", "address"))
    elif resource == "pods":
        phase = status.get("phase")
        if phase is not None and phase not in _POD_PHASES:
            raise _bad(f"status.phase {phase!r} is not a pod phase")
        for f in ("containerStatuses", "initContainerStatuses"):
            _maps(status, f, ("name",))
    elif resource == "devices":
        for i, twin in enumerate(_maps(status, "twins", ("propertyName",))):
            for part in ("reported", "observedDesired"):
                v = twin.get(part)
                if v is None:
                    continue
                where = f"status.twins[{i}].{part}"
                if not isinstance(v, dict) or not isinstance(v.get("value"), str):
                    raise _bad(f"{where} must be a map with a string value")
                if len(v["value"]) > MAX_VALUE:
                    raise _bad(f"{where}.value is longer than {MAX_VALUE} characters")
                meta = v.get("metadata")
                if meta is not None and not isinstance(meta, dict):
                    raise _bad(f"{where}.metadata must be a map")
    return status


def desired_values(raw: Any) -> dict[str, str]:
    """A ``desired`` report's ``{property: value}``."""
    if not isinstance(raw, dict) or not raw:
        raise _bad("desired must be a non-empty map")
    for k, v in raw.items():
        if not (isinstance(k, str) and isinstance(v, str)):
            raise _bad("desired must map property names to strings")
        if len(v) > MAX_VALUE:
            raise _bad(f"desired value of {k[:MAX_NAME]!r} is longer than {MAX_VALUE} characters")
    return dict(raw)


def history_entries(raw: Any) -> list[dict[str, str]]:
    """A ``twin-history`` report's entries: ``propertyName``, ``value`` and a
    ``timestamp`` in ms since the epoch as a string of ASCII digits."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_HISTORY_ENTRIES:
        raise _bad(f"history must be a list of 1..{MAX_HISTORY_ENTRIES} entries")
    out = []
    for e in raw:
        if not isinstance(e, dict):
            raise _bad("a history entry must be a map")
        name, value, ts = e.get("propertyName"), e.get("value"), e.get("timestamp")
        if not (isinstance(name, str) and isinstance(value, str) and isinstance(ts, str)):
            raise _bad("a history entry needs string propertyName, value and timestamp")
        if not name or len(name) > MAX_NAME:
            raise _bad(f"a history propertyName has 1..{MAX_NAME} characters")
        if len(value) > MAX_VALUE:
            raise _bad(f"a history value is longer than {MAX_VALUE} characters")
        # isdigit() alone takes "²" (and other digits int() refuses or reads otherwise)
        if not (ts.isascii() and ts.isdigit() and len(ts) <= MAX_TIMESTAMP_DIGITS):
            raise _bad("a history timestamp is milliseconds since the epoch (ASCII digits)")
        out.append({"propertyName": name, "value": value, "timestamp": ts})
    return out


def upgrade_report(body: Any) -> UpgradeReport:
    """An ``upgrade`` report's body (``edgeproto.upgrade.parse_report``: exactly
    job, uid, version, state, reason, time; a board never reports ``pending``);
    ``UpgradeError`` (a ``ProtocolError``) naming the field otherwise."""
    if isinstance(body, dict):
        check_json(body, "upgrade report")
    return parse_report(body)
