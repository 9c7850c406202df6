"""The Modbus mapper: TCP, RTU over serial and RTU over TCP devices → DeviceTwin.

``modbus-mapper --mqtt tcp://127.0.0.1:1883 --node NAME`` follows the node's
devices through the agent; ``--config devices.yaml`` runs standalone. See
``mappers/README.md`` for the Device configuration keys.

Importing the package loads nothing: the sans-io cores (``_codec``, ``_frame``,
``_plan``) stay free of trio, paho and pyserial, and the names below that need
them (buses, device tasks, the CLI) are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mappers.modbus._bus import Bus, BusPool, SerialBus, TcpBus
    from mappers.modbus._cli import PROTOCOL, main, make_factory
    from mappers.modbus._codec import DataType, RegisterCodec
    from mappers.modbus._config import ModbusDevice, parse_device
    from mappers.modbus._device import ModbusDeviceTask

__all__ = [
    "PROTOCOL",
    "Bus",
    "BusPool",
    "DataType",
    "ModbusDevice",
    "ModbusDeviceTask",
    "RegisterCodec",
    "SerialBus",
    "TcpBus",
    "main",
    "make_factory",
    "parse_device",
]

_HOME = {
    "Bus": "_bus",
    "BusPool": "_bus",
    "SerialBus": "_bus",
    "TcpBus": "_bus",
    "PROTOCOL": "_cli",
    "main": "_cli",
    "make_factory": "_cli",
    "DataType": "_codec",
    "RegisterCodec": "_codec",
    "ModbusDevice": "_config",
    "parse_device": "_config",
    "ModbusDeviceTask": "_device",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
