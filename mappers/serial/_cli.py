"""``serial-mapper``: device docs → serial sensor tasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mappers._manifest import DeviceDoc
from mappers._runner import DeviceFactory, cli_main
from mappers.serial._config import parse_sensor
from mappers.serial._device import SerialSensorTask

__all__ = ["PROTOCOL", "main", "make_factory"]

PROTOCOL = "serial"


def make_factory(publisher: Any) -> DeviceFactory:
    def factory(doc: DeviceDoc) -> SerialSensorTask:
        return SerialSensorTask(parse_sensor(doc), publisher)

    return factory


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(PROTOCOL, make_factory, argv)
