"""One line-oriented serial sensor: read lines, report values, survive unplugging."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import trio

from mappers._errors import CodecError
from mappers._serialport import open_serial
from mappers._twin import device_topics, state_update, twin_update
from mappers.serial._config import SerialSensor
from mappers.serial._parse import LineSplitter, Value

__all__ = ["SerialSensorTask"]

log = logging.getLogger(__name__)

REOPEN_INTERVAL = 0.5


def _format(value: Value, twin_type: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and twin_type == "int":
        return str(round(value))
    return str(value)


class SerialSensorTask:
    def __init__(self, sensor: SerialSensor, publisher: Any) -> None:
        self.name = sensor.name
        self.sensor = sensor
        self.publisher = publisher
        self.topics = device_topics(sensor.namespace, sensor.name)
        self.state = "unknown"
        self.counters = {
            "lines": 0,
            "garbage": 0,
            "overflows": 0,
            "opens": 0,
            "open_failures": 0,
            "disconnects": 0,
            "twin_updates": 0,
            "writes_refused": 0,
        }
        self.last_garbage: str | None = None
        self.values: dict[str, str] = {}
        self._pending: dict[str, Value] = {}
        self._splitter = LineSplitter(sensor.line_ending, sensor.max_line)
        self._warned = False

    def statistics(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "port": self.sensor.port,
            **self.counters,
            "overflows": self._splitter.overflows,
            "last_garbage": self.last_garbage,
            "values": dict(self.values),
        }

    def on_delta(self, delta: Mapping[str, str]) -> None:
        self.counters["writes_refused"] += len(delta)
        log.warning(
            "device %s: serial sensors are read-only, refusing to write %s",
            self.name,
            ", ".join(sorted(delta)),
        )

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.info("device %s: %s", self.name, state, extra={"device": self.name})
            self.state = state
            self.publisher.publish(self.topics["state"], state_update(state))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reporter)
            task_status.started()
            while True:
                port = await self._open()
                if port is None:
                    await trio.sleep(REOPEN_INTERVAL)
                    continue
                try:
                    await self._read(port)
                finally:
                    port.close()
                self._splitter.reset()
                self._set_state("offline")
                await trio.sleep(REOPEN_INTERVAL)

    async def _open(self) -> Any:
        s = self.sensor
        try:
            port = await open_serial(
                s.port,
                baud=s.baud,
                data_bits=s.data_bits,
                parity=s.parity,
                stop_bits=s.stop_bits,
            )
        except OSError as exc:  # pyserial's SerialException is an OSError
            self.counters["open_failures"] += 1
            if not self._warned:
                log.warning(
                    "device %s: cannot open %s: %s",
                    self.name,
                    s.port,
                    exc,
                    extra={"device": self.name},
                )
                self._warned = True
            self._set_state("offline")
            return None
        self._warned = False
        self.counters["opens"] += 1
        return port

    async def _read(self, port: Any) -> None:
        fd = port.fileno()
        silence = self.sensor.offline_after_ms / 1000
        while True:
            with trio.move_on_after(silence) as scope:
                await trio.lowlevel.wait_readable(fd)
            if scope.cancelled_caught:
                self._set_state("offline")  # port is there, sensor says nothing
                continue
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                self.counters["disconnects"] += 1
                log.warning(
                    "device %s: %s lost: %s",
                    self.name,
                    self.sensor.port,
                    exc,
                    extra={"device": self.name},
                )
                return
            if not data:
                self.counters["disconnects"] += 1
                log.warning(
                    "device %s: %s closed", self.name, self.sensor.port, extra={"device": self.name}
                )
                return
            for line in self._splitter.feed(data):
                self._line(line)

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            values = self.sensor.parser.parse(line)
        except CodecError as exc:
            self.counters["garbage"] += 1
            self.last_garbage = str(exc)
            log.debug(
                "device %s: garbage line skipped: %s", self.name, exc, extra={"device": self.name}
            )
            return
        self.counters["lines"] += 1
        self._pending.update(values)
        self._set_state("online")

    async def _reporter(self) -> None:
        period = self.sensor.report_ms / 1000
        while True:
            await trio.sleep(period)
            if not self._pending:
                continue
            out = {}
            for name, value in self._pending.items():
                twin_type = self.sensor.twin_types.get(name, "string")
                text = _format(value, twin_type)
                self.values[name] = text
                out[name] = (text, twin_type)
            self._pending.clear()
            self.publisher.publish(self.topics["update"], twin_update(out))
            self.counters["twin_updates"] += 1
