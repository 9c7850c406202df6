"""The serial mapper: line-oriented sensors (delimited or regex lines) → DeviceTwin.

``serial-mapper --mqtt tcp://127.0.0.1:1883 --node NAME`` follows the node's
devices through the agent; ``--config devices.yaml`` runs standalone. See
``mappers/README.md`` for the configuration keys.

Importing the package loads nothing: the line parser (``_parse``) stays free of
trio, paho and pyserial, and the names below that need them are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mappers.serial._cli import PROTOCOL, main, make_factory
    from mappers.serial._config import SerialSensor, parse_sensor
    from mappers.serial._device import SerialSensorTask
    from mappers.serial._parse import FieldSpec, LineParser, LineSplitter

__all__ = [
    "PROTOCOL",
    "FieldSpec",
    "LineParser",
    "LineSplitter",
    "SerialSensor",
    "SerialSensorTask",
    "main",
    "make_factory",
    "parse_sensor",
]

_HOME = {
    "PROTOCOL": "_cli",
    "main": "_cli",
    "make_factory": "_cli",
    "SerialSensor": "_config",
    "parse_sensor": "_config",
    "SerialSensorTask": "_device",
    "FieldSpec": "_parse",
    "LineParser": "_parse",
    "LineSplitter": "_parse",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
