"""One Modbus device: poll its properties, report twin values, write desired values."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from edgeio import SECONDS_BUCKETS, Histogram
from mappers._errors import (
    BusUnavailable,
    CodecError,
    CrcError,
    DeviceRejected,
    DeviceTimeout,
    MapperError,
    ProtocolError,
    WriteRefused,
)
from mappers._twin import device_topics, state_update, twin_update
from mappers.modbus._bus import Bus
from mappers.modbus._codec import Value, format_value, parse_value
from mappers.modbus._config import ModbusDevice, ModbusProperty
from mappers.modbus._frame import ReadResult, parse_response, read_request, write_request
from mappers.modbus._plan import ReadBatch, plan_reads

__all__ = ["ModbusDeviceTask", "Publisher"]

log = logging.getLogger(__name__)

ONLINE = "online"
OFFLINE = "offline"


class Publisher(Protocol):
    def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False
    ) -> object: ...


@dataclass
class PropertyState:
    value: str | None = None
    error: str | None = None  # the last read's error, None once it reads again
    write_error: str | None = None  # the last write's error, None after a good write
    reads: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "error": self.error,
            "write_error": self.write_error,
            "reads": self.reads,
            "errors": self.errors,
        }


class ModbusDeviceTask:
    """Polls per collectCycle, batches contiguous registers, handles deltas."""

    def __init__(self, device: ModbusDevice, bus: Bus, publisher: Publisher) -> None:
        self.name = device.name
        self.device = device
        self.bus = bus
        self.publisher = publisher
        self.topics = device_topics(device.namespace, device.name)
        self.state = "unknown"
        self.consecutive_failures = 0
        self.props = {p.name: PropertyState() for p in device.properties}
        self.counters = {
            "requests": 0,
            "responses": 0,
            "reads": 0,  # read requests answered with registers or bits
            "timeouts": 0,
            "crc_errors": 0,
            "protocol_errors": 0,
            "exceptions": 0,
            "bus_errors": 0,
            "retries": 0,
            "writes": 0,
            "write_errors": 0,
            "writes_refused": 0,
            "twin_updates": 0,
            "deltas_dropped": 0,
            "deltas_already_applied": 0,
        }
        self._warned = False
        self.latency = Histogram(SECONDS_BUCKETS)  # request → answer (or timeout), retries each
        self._delta_send, self._delta_recv = trio.open_memory_channel[Mapping[str, str]](16)
        self._split: set[tuple[str, int]] = set()  # batches that must be read per property
        # property -> (desired text written, value read back): a desired value the device
        # stores differently ("45.67" → "45.7", "1" → "true") is not rewritten every cycle
        self._applied: dict[str, tuple[str, str]] = {}

    # -- public -------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "bus": self.bus.key,
            "bus_stats": self.bus.statistics(),
            "slave_id": self.device.slave_id,
            "consecutive_failures": self.consecutive_failures,
            **self.counters,
            "properties": {n: s.as_dict() for n, s in self.props.items()},
        }

    def on_delta(self, delta: Mapping[str, str]) -> None:
        try:
            self._delta_send.send_nowait(dict(delta))
        except trio.WouldBlock:
            self.counters["deltas_dropped"] += 1
            log.warning("device %s: delta queue full, dropped %s", self.name, sorted(delta))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cycles: dict[int, list[ModbusProperty]] = {}
        for p in self.device.properties:
            cycles.setdefault(p.collect_cycle_ms, []).append(p)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deltas)
            for cycle_ms, props in sorted(cycles.items()):
                nursery.start_soon(self._poll, cycle_ms, props)
            task_status.started()
            self._initial_desired()

    # -- requests with retries and device state --------------------------------------

    async def _request(self, pdu: bytes) -> ReadResult:
        dev = self.device
        last: MapperError | None = None
        for attempt in range(dev.retries + 1):
            if attempt:
                self.counters["retries"] += 1
            self.counters["requests"] += 1
            started = trio.current_time()
            try:
                try:
                    answer = await self.bus.transact(dev.slave_id, pdu, dev.timeout_ms / 1000)
                finally:
                    self.latency.observe(trio.current_time() - started)
                result = parse_response(pdu, answer)
            except DeviceRejected:
                self.counters["responses"] += 1
                self.counters["exceptions"] += 1
                self._answered()
                raise
            except DeviceTimeout as exc:
                self.counters["timeouts"] += 1
                last = exc
            except CrcError as exc:
                self.counters["crc_errors"] += 1
                last = exc
            except ProtocolError as exc:
                self.counters["protocol_errors"] += 1
                last = exc
            except BusUnavailable as exc:
                self.counters["bus_errors"] += 1
                self._failed(exc)
                raise
            else:
                self.counters["responses"] += 1
                self._answered()
                return result
        assert last is not None
        self._failed(last)
        raise last

    def _answered(self) -> None:
        self.consecutive_failures = 0
        if self._warned:
            log.warning("device %s: answering again", self.name, extra={"device": self.name})
            self._warned = False
        if self.state != ONLINE:
            self._set_state(ONLINE)

    def _failed(self, exc: MapperError) -> None:
        self.consecutive_failures += 1
        if not self._warned:
            log.warning("device %s: %s", self.name, exc, extra={"device": self.name})
            self._warned = True
        else:
            log.debug("device %s: %s", self.name, exc, extra={"device": self.name})
        if self.consecutive_failures >= self.device.offline_after and self.state != OFFLINE:
            self._set_state(OFFLINE)

    def _set_state(self, state: str) -> None:
        log.info("device %s: %s", self.name, state, extra={"device": self.name})
        self.state = state
        self.publisher.publish(self.topics["state"], state_update(state))

    # -- polling ---------------------------------------------------------------------

    async def _poll(self, cycle_ms: int, props: list[ModbusProperty]) -> None:
        batches = plan_reads(props)
        period = cycle_ms / 1000
        next_at = trio.current_time()
        while True:
            values = await self.collect(batches)
            if values:
                self._report(values)
            next_at += period
            now = trio.current_time()
            if next_at < now:  # overran (slow bus): do not try to catch up
                next_at = now
            await trio.sleep_until(next_at)

    async def collect(self, batches: list[ReadBatch]) -> dict[str, Value]:
        """Read every batch once; returns the decoded values that were read."""
        values: dict[str, Value] = {}
        for batch in batches:
            key = (batch.register.value, batch.address)
            if len(batch.properties) > 1 and key in self._split:
                for p in batch.properties:
                    single = ReadBatch(p.register, p.address, p.count, (p,))
                    await self._read_batch(single, values)
                continue
            failed = await self._read_batch(batch, values)
            if isinstance(failed, DeviceRejected) and len(batch.properties) > 1:
                # one bad address spoils the whole batch: read these one by one from now on
                log.info(
                    "device %s: batch at %s %d split after %s",
                    self.name,
                    *key,
                    failed,
                    extra={"device": self.name},
                )
                self._split.add(key)
                for p in batch.properties:
                    single = ReadBatch(p.register, p.address, p.count, (p,))
                    await self._read_batch(single, values)
        return values

    async def _read_batch(self, batch: ReadBatch, values: dict[str, Value]) -> MapperError | None:
        try:
            result = await self._request(read_request(batch.register, batch.address, batch.count))
        except (DeviceRejected, DeviceTimeout, ProtocolError, BusUnavailable) as exc:
            for p in batch.properties:
                st = self.props[p.name]
                st.errors += 1
                st.error = f"read failed: {exc}"
            return exc
        self.counters["reads"] += 1
        for p in batch.properties:
            st = self.props[p.name]
            try:
                if batch.register.is_bits:
                    value = p.codec.decode_bits(result.bits[batch.slice_for(p)])
                else:
                    value = p.codec.decode(result.registers[batch.slice_for(p)])
            except CodecError as exc:
                st.errors += 1
                st.error = f"decode failed: {exc}"
                continue
            values[p.name] = value
            st.reads += 1
            st.error = None
        return None

    def _report(self, values: Mapping[str, Value]) -> None:
        out: dict[str, tuple[str, str]] = {}
        for name, value in values.items():
            prop = self.device.prop(name)
            twin_type = prop.twin_type if prop is not None else ""
            text = format_value(value, twin_type)
            self.props[name].value = text
            out[name] = (text, twin_type or "string")
        self.publisher.publish(self.topics["update"], twin_update(out))
        self.counters["twin_updates"] += 1

    # -- writes -------------------------------------------------------------------------

    def _initial_desired(self) -> None:
        """Write desired values given in the Device (or the twin's expected) once at start."""
        doc = self.device.doc
        if doc is None:
            return
        delta = {}
        for p in self.device.properties:
            want = doc.expected(p.name)
            if want is not None and not p.read_only:
                delta[p.name] = want
        if delta:
            self.on_delta(delta)

    async def _deltas(self) -> None:
        async for delta in self._delta_recv:
            for name, text in delta.items():
                st = self.props.get(name)
                if st is not None and self._applied.get(name) == (text, st.value):
                    self.counters["deltas_already_applied"] += 1
                    continue
                try:
                    await self.write(name, text)
                except WriteRefused as exc:
                    self.counters["writes_refused"] += 1
                    st = self.props.get(name)
                    if st is not None:
                        st.write_error = str(exc)
                    log.warning("device %s: %s", self.name, exc, extra={"device": self.name})
                except MapperError as exc:
                    self.counters["write_errors"] += 1
                    st = self.props.get(name)
                    if st is not None:
                        st.write_error = f"write failed: {exc}"
                    log.warning(
                        "device %s: writing %s=%r failed: %s",
                        self.name,
                        name,
                        text,
                        exc,
                        extra={"device": self.name},
                    )

    def _encode(self, prop: ModbusProperty, text: str) -> list[int] | list[bool]:
        try:
            value = parse_value(text, prop.codec.data_type)
            if isinstance(value, int | float) and not isinstance(value, bool):
                if prop.minimum is not None and value < prop.minimum:
                    raise WriteRefused(
                        f"property {prop.name}: {text} is below the minimum {prop.minimum:g}"
                    )
                if prop.maximum is not None and value > prop.maximum:
                    raise WriteRefused(
                        f"property {prop.name}: {text} is above the maximum {prop.maximum:g}"
                    )
            if prop.register.is_bits:
                return prop.codec.encode_bits(value)
            return prop.codec.encode(value)
        except CodecError as exc:
            raise WriteRefused(f"property {prop.name}: cannot write {text!r}: {exc}") from None

    async def write(self, name: str, text: str) -> str:
        """Write a desired value, read it back, report it; returns the value read back."""
        prop = self.device.prop(name)
        if prop is None:
            raise WriteRefused(f"property {name}: not in device {self.name}")
        if prop.read_only:
            why = "accessMode ReadOnly" if prop.register.writable else prop.register.value
            raise WriteRefused(f"property {name}: read-only ({why}), refusing to write {text!r}")
        encoded = self._encode(prop, text)
        self.counters["writes"] += 1
        await self._request(write_request(prop.register, prop.address, encoded))
        values: dict[str, Value] = {}
        failed = await self._read_batch(
            ReadBatch(prop.register, prop.address, prop.count, (prop,)), values
        )
        if failed is not None:
            raise failed
        self._report(values)
        self.props[name].write_error = None
        self._applied[name] = (text, self.props[name].value or "")
        log.info(
            "device %s: wrote %s=%s, reads back %s", self.name, name, text, self.props[name].value
        )
        return self.props[name].value or ""
