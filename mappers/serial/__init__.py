"""The serial mapper: line-oriented sensors (delimited or regex lines) → DeviceTwin.

``serial-mapper --mqtt tcp://127.0.0.1:1883 --node NAME`` follows the node's
devices through the agent; ``--config devices.yaml`` runs standalone. See
``mappers/README.md`` for the configuration keys.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from mappers._manifest import DeviceDoc
from mappers._runner import DeviceFactory, cli_main
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

PROTOCOL = "serial"


def make_factory(publisher: Any) -> DeviceFactory:
    def factory(doc: DeviceDoc) -> SerialSensorTask:
        return SerialSensorTask(parse_sensor(doc), publisher)

    return factory


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(PROTOCOL, make_factory, argv)


if __name__ == "__main__":
    sys.exit(main())
