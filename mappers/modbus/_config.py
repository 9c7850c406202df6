"""Modbus device configuration from a DeviceDoc, parsed once into frozen dataclasses.

Protocol ``configData`` (KubeEdge keys): ``slaveID``; ``tcp: {ip, port}`` or flat
``ip``/``port``; ``com: {serialPort, baudRate, dataBits, parity, stopBits}`` or the
same keys flat. Extensions: ``rtuOverTcp`` (bool), ``timeout`` (ms), ``retries``,
``offlineAfter`` (consecutive failures).

Visitor ``configData`` (KubeEdge keys): ``register``, ``offset`` (0-based Modbus
address), ``limit`` (registers/bits), ``scale``, ``isSwap``, ``isRegisterSwap``.
Extensions: ``dataType``, ``byteOrder``/``wordOrder`` (big|little), ``valueOffset``.
``collectCycle`` on the property is in milliseconds.

KubeEdge semantics: a visitor without ``dataType``, or with one of KubeEdge's own
names (``int``, ``float``, ``double``, ``boolean``/``bool``, ``string``, as the
kubeedge/examples manifests write it), is read as KubeEdge's Modbus mappers read
it (mappers-go ``TransferData``, kubeedge/examples temperature mapper): an
``int`` is the unsigned big-endian value of its 1, 2 or 4 registers (after the
swaps), times ``scale``, cut toward zero; an ``int`` on coils or discrete inputs
is the bits as a number (``1``/``0`` for one coil); a ``float``/``double`` of 2/4
registers is an IEEE float times ``scale``; of one register, the unsigned value
times ``scale`` rounded half up to 2 decimals. The type is the visitor's
``dataType`` if given, else the DeviceModel property's ``type``. An edgeflock
``dataType`` (``int16``, ``uint32``, ``float32``...) keeps edgeflock's semantics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mappers._errors import CodecError, ConfigError
from mappers._manifest import DeviceDoc, PropertyDoc
from mappers.modbus._codec import DataType, RegisterCodec, describe
from mappers.modbus._frame import Register

__all__ = ["ModbusDevice", "ModbusProperty", "SerialEndpoint", "TcpEndpoint", "parse_device"]

DEFAULT_TIMEOUT_MS = 1000
DEFAULT_RETRIES = 1
DEFAULT_OFFLINE_AFTER = 3


@dataclass(frozen=True)
class TcpEndpoint:
    host: str
    port: int
    rtu: bool = False  # RTU frames over a TCP socket (serial gateways)

    @property
    def key(self) -> str:
        return f"{'rtu+' if self.rtu else ''}tcp://{self.host}:{self.port}"


@dataclass(frozen=True)
class SerialEndpoint:
    port: str
    baud: int = 9600
    data_bits: int = 8
    parity: str = "N"  # N | E | O
    stop_bits: int = 1

    @property
    def key(self) -> str:
        return f"rtu://{self.port}"


@dataclass(frozen=True)
class ModbusProperty:
    name: str
    register: Register
    address: int
    codec: RegisterCodec
    collect_cycle_ms: int
    read_only: bool
    twin_type: str
    minimum: float | None = None
    maximum: float | None = None

    @property
    def count(self) -> int:
        return self.codec.count

    @property
    def end(self) -> int:
        return self.address + self.codec.count


@dataclass(frozen=True)
class ModbusDevice:
    name: str
    endpoint: TcpEndpoint | SerialEndpoint
    slave_id: int
    properties: tuple[ModbusProperty, ...]
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    retries: int = DEFAULT_RETRIES
    offline_after: int = DEFAULT_OFFLINE_AFTER
    doc: DeviceDoc | None = None
    namespace: str = "default"  # with name: the device id namespace/name on the bus

    def prop(self, name: str) -> ModbusProperty | None:
        for p in self.properties:
            if p.name == name:
                return p
        return None


_REGISTER_ALIASES = {r.value.lower(): r for r in Register} | {
    "coil": Register.COIL,
    "coils": Register.COIL,
    "discreteinput": Register.DISCRETE_INPUT,
    "holding": Register.HOLDING,
    "holdingregisters": Register.HOLDING,
    "input": Register.INPUT,
    "inputregisters": Register.INPUT,
}


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
    except (OverflowError, TypeError, ValueError):  # OverflowError: int(inf)
        raise ConfigError(f"{where}: {describe(value)} is not an integer") from None
    if not lo <= number <= hi:
        raise ConfigError(f"{where}: {describe(number)} not in {lo}..{hi}")
    return number


def _float(value: Any, where: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (OverflowError, TypeError, ValueError):  # OverflowError: float(10**400)
        raise ConfigError(f"{where}: {describe(value)} is not a finite number") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: {describe(value)} is not a finite number")
    return number


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{where}: {value!r} is not true/false")


def _order(value: Any, where: str) -> bool:
    """'big' → False, 'little' → True (swap)."""
    text = str(value).lower()
    if text not in ("big", "little"):
        raise ConfigError(f"{where}: {value!r} (big or little)")
    return text == "little"


def _endpoint(cfg: Mapping[str, Any], where: str) -> TcpEndpoint | SerialEndpoint:
    tcp = cfg.get("tcp")
    com = cfg.get("com")
    rtu_over_tcp = _bool(cfg.get("rtuOverTcp", False), f"{where}.rtuOverTcp")
    if isinstance(tcp, Mapping) and tcp.get("ip"):
        host, port = tcp.get("ip"), tcp.get("port", 502)
    elif cfg.get("ip"):
        host, port = cfg.get("ip"), cfg.get("port", 502)
    else:
        host = None
    if host is not None:
        return TcpEndpoint(str(host), _int(port, f"{where}.port", 1, 65535), rtu_over_tcp)
    serial = com if isinstance(com, Mapping) and com.get("serialPort") else cfg
    if not serial.get("serialPort"):
        raise ConfigError(f"{where}: needs tcp{{ip, port}} or com{{serialPort, ...}}")
    parity = str(serial.get("parity", "none")).strip().lower()
    parity_map = {"none": "N", "n": "N", "even": "E", "e": "E", "odd": "O", "o": "O"}
    if parity not in parity_map:
        raise ConfigError(f"{where}.parity: {parity!r} (none, even or odd)")
    return SerialEndpoint(
        port=str(serial["serialPort"]),
        baud=_int(serial.get("baudRate", 9600), f"{where}.baudRate", 50, 4_000_000),
        data_bits=_int(serial.get("dataBits", 8), f"{where}.dataBits", 5, 8),
        parity=parity_map[parity],
        stop_bits=_int(serial.get("stopBits", 1), f"{where}.stopBits", 1, 2),
    )


# dataType values that are KubeEdge's own names: the manifest asks for KubeEdge's reading
_KUBEEDGE_TYPES = {"int", "float", "double", "boolean", "bool", "string"}


def _kubeedge_codec(register: Register, kind: str, limit: int) -> tuple[DataType, bool, int | None]:
    """(data type, truncate, decimals) of KubeEdge's reading of a ``kind`` property."""
    if register.is_bits:
        return (DataType.UINT16, True, None) if kind == "int" else (DataType.BOOL, False, None)
    if kind in ("float", "double"):
        if limit in (2, 4):
            return ({2: DataType.FLOAT32, 4: DataType.FLOAT64}[limit], False, None)
        return DataType.UINT16, False, 2
    if kind in ("boolean", "bool"):
        return DataType.BOOL, False, None
    if kind == "string":
        return (DataType.STRING if limit > 0 else DataType.UINT16), False, None
    return {2: DataType.UINT32, 4: DataType.UINT64}.get(limit, DataType.UINT16), True, None


def _property(doc: PropertyDoc, where: str) -> ModbusProperty:
    v = doc.visitor
    reg_raw = v.get("register")
    if reg_raw is None:
        raise ConfigError(f"{where}.register is required ({', '.join(r.value for r in Register)})")
    register = _REGISTER_ALIASES.get(str(reg_raw).replace("_", "").replace(" ", "").lower())
    if register is None:
        raise ConfigError(
            f"{where}.register: {reg_raw!r} (one of {', '.join(r.value for r in Register)})"
        )
    address = _int(v.get("offset", 0), f"{where}.offset", 0, 0xFFFF)
    limit = _int(v.get("limit", 0) or 0, f"{where}.limit", 0, register.max_read)
    twin_type = doc.model.type
    named = str(v.get("dataType") or "").strip().lower()
    truncate, decimals = False, None
    try:
        if not named or named in _KUBEEDGE_TYPES:
            data_type, truncate, decimals = _kubeedge_codec(register, named or twin_type, limit)
        else:
            data_type = DataType.parse(named)
    except CodecError as exc:
        raise ConfigError(f"{where}.dataType: {exc}") from None
    if register.is_bits and data_type not in (DataType.BOOL, DataType.UINT16):
        raise ConfigError(f"{where}: {register.value} holds bits: dataType bool")
    byte_swap = _bool(v.get("isSwap", False), f"{where}.isSwap")
    word_swap = _bool(v.get("isRegisterSwap", False), f"{where}.isRegisterSwap")
    if "byteOrder" in v:
        byte_swap = _order(v["byteOrder"], f"{where}.byteOrder")
    if "wordOrder" in v:
        word_swap = _order(v["wordOrder"], f"{where}.wordOrder")
    scale = _float(v.get("scale", 1) or 1, f"{where}.scale")
    offset = _float(v.get("valueOffset", 0) or 0, f"{where}.valueOffset")
    if register.is_bits and data_type is DataType.BOOL and limit > 1:
        data_type = DataType.UINT16  # several bits → an integer, bit 0 first
    try:
        codec = RegisterCodec(
            data_type=data_type,
            count=limit,
            byte_swap=byte_swap,
            word_swap=word_swap,
            scale=scale,
            value_offset=offset,
            truncate=truncate,
            decimals=decimals,
        )
    except CodecError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if register.is_bits and codec.count > 16 and data_type is DataType.UINT16:
        raise ConfigError(f"{where}.limit: at most 16 bits per property")
    if address + codec.count > 0x10000:
        raise ConfigError(f"{where}: offset+limit past address 65535")
    if twin_type == "string" and data_type is not DataType.STRING:
        twin_type = (
            "float"
            if (codec.scaled and not codec.truncate) or data_type.value.startswith("float")
            else "int"
        )
    return ModbusProperty(
        name=doc.name,
        register=register,
        address=address,
        codec=codec,
        collect_cycle_ms=doc.collect_cycle_ms,
        read_only=doc.model.read_only or not register.writable,
        twin_type=twin_type,
        minimum=doc.model.minimum,
        maximum=doc.model.maximum,
    )


def parse_device(doc: DeviceDoc) -> ModbusDevice:
    where = f"device {doc.namespace}/{doc.name} protocol.configData"
    cfg = doc.protocol_config
    endpoint = _endpoint(cfg, where)
    slave_id = _int(cfg.get("slaveID", 1), f"{where}.slaveID", 0, 247)
    props = tuple(
        _property(p, f"device {doc.namespace}/{doc.name} property {p.name} visitors.configData")
        for p in doc.properties
    )
    names = [p.name for p in props]
    if len(set(names)) != len(names):
        raise ConfigError(f"device {doc.namespace}/{doc.name}: duplicate property names")
    return ModbusDevice(
        name=doc.name,
        namespace=doc.namespace,
        endpoint=endpoint,
        slave_id=slave_id,
        properties=props,
        timeout_ms=_int(cfg.get("timeout", DEFAULT_TIMEOUT_MS), f"{where}.timeout", 1, 600_000),
        retries=_int(cfg.get("retries", DEFAULT_RETRIES), f"{where}.retries", 0, 10),
        offline_after=_int(
            cfg.get("offlineAfter", DEFAULT_OFFLINE_AFTER), f"{where}.offlineAfter", 1, 1000
        ),
        doc=doc,
    )
