"""Serial sensor configuration from a DeviceDoc.

Protocol ``configData``: ``com: {serialPort, baudRate, dataBits, parity, stopBits}``
(or the same keys flat); ``delimiter`` (default ",") or ``regex`` (named groups);
``lineEnding`` (default "\\n"; a trailing "\\r" is dropped), ``maxLineLength``
(default 512), ``offlineAfter`` (ms without a valid line, default 5000).
Visitor ``configData``: ``index`` (0-based field, delimited lines) or ``group``
(regex group, default: the property name); ``dataType`` (int, float, bool, string;
default from the model's type), ``scale``, ``valueOffset``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mappers._errors import CodecError, ConfigError
from mappers._manifest import DeviceDoc
from mappers.serial._parse import FieldSpec, LineParser

__all__ = ["SerialSensor", "parse_sensor"]


@dataclass(frozen=True)
class SerialSensor:
    name: str
    port: str
    baud: int
    data_bits: int
    parity: str
    stop_bits: int
    parser: LineParser
    line_ending: bytes
    max_line: int
    report_ms: int
    offline_after_ms: int
    twin_types: dict[str, str]
    namespace: str = "default"  # with name: the device id namespace/name on the bus


def _num(value: Any, where: str, kind: type[int] | type[float] = int) -> Any:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
    except (OverflowError, TypeError, ValueError):  # OverflowError: int(inf), float(10**400)
        shown = "a huge integer" if isinstance(value, int) else repr(value)[:40]
        raise ConfigError(f"{where}: {shown} is not a finite number") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    return number


_TYPES = {
    "int": "int",
    "integer": "int",
    "float": "float",
    "double": "float",
    "bool": "bool",
    "boolean": "bool",
    "string": "string",
}


def parse_sensor(doc: DeviceDoc) -> SerialSensor:
    where = f"device {doc.namespace}/{doc.name} protocol.configData"
    cfg = doc.protocol_config
    nested = cfg.get("com")
    com: Mapping[str, Any] = nested if isinstance(nested, Mapping) else cfg
    port = com.get("serialPort")
    if not port:
        raise ConfigError(f"{where}.com.serialPort is required")
    parity = str(com.get("parity", "none")).lower()
    parity_map = {"none": "N", "n": "N", "even": "E", "e": "E", "odd": "O", "o": "O"}
    if parity not in parity_map:
        raise ConfigError(f"{where}.parity: {parity!r} (none, even or odd)")
    regex = cfg.get("regex")
    delimiter = None if regex else str(cfg.get("delimiter", ","))
    if regex is not None:
        try:
            re.compile(str(regex))
        except re.error as exc:
            raise ConfigError(f"{where}.regex: {exc}") from None
    fields = []
    types = {}
    for p in doc.properties:
        pw = f"device {doc.namespace}/{doc.name} property {p.name} visitors.configData"
        v = p.visitor
        dt_raw = str(v.get("dataType") or p.model.type or "string").lower()
        if dt_raw not in _TYPES:
            raise ConfigError(f"{pw}.dataType: {dt_raw!r} (int, float, bool or string)")
        data_type = _TYPES[dt_raw]
        scale = _num(v.get("scale", 1) or 1, f"{pw}.scale", float)
        offset = _num(v.get("valueOffset", 0) or 0, f"{pw}.valueOffset", float)
        if (scale != 1 or offset != 0) and data_type == "int":
            data_type = "float"
        index = None
        if delimiter is not None:
            if "index" not in v:
                raise ConfigError(f"{pw}.index is required with a delimiter")
            index = _num(v["index"], f"{pw}.index")
            if index < 0:
                raise ConfigError(f"{pw}.index must be >= 0")
        try:
            field = FieldSpec(
                p.name,
                index=index,
                group=v.get("group"),
                data_type=data_type,
                scale=scale,
                value_offset=offset,
            )
        except CodecError as exc:
            raise ConfigError(f"{pw}: {exc}") from None
        fields.append(field)
        model_type = p.model.type if p.model.type != "string" or data_type == "string" else ""
        types[p.name] = model_type or {"bool": "boolean"}.get(data_type, data_type)
    try:
        parser = LineParser(
            fields, delimiter=delimiter, regex=None if regex is None else str(regex)
        )
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    try:
        ending = str(cfg.get("lineEnding", "\n")).encode().decode("unicode_escape").encode()
    except UnicodeError as exc:  # "\\x" without hex digits, a lone surrogate
        raise ConfigError(f"{where}.lineEnding: {exc}") from None
    cycles = [p.collect_cycle_ms for p in doc.properties] or [1000]
    return SerialSensor(
        name=doc.name,
        namespace=doc.namespace,
        port=str(port),
        baud=_num(com.get("baudRate", 9600), f"{where}.baudRate"),
        data_bits=_num(com.get("dataBits", 8), f"{where}.dataBits"),
        parity=parity_map[parity],
        stop_bits=_num(com.get("stopBits", 1), f"{where}.stopBits"),
        parser=parser,
        line_ending=ending or b"\n",
        max_line=_num(cfg.get("maxLineLength", 512), f"{where}.maxLineLength"),
        report_ms=min(cycles),
        offline_after_ms=_num(cfg.get("offlineAfter", 5000), f"{where}.offlineAfter"),
        twin_types=types,
    )
