"""Physical Modbus buses: a TCP connection or a serial line, one request at a time.

One ``Bus`` per physical bus (``tcp://host:port``, ``rtu+tcp://…``, ``rtu:///dev/tty…``),
shared by every device on it. A lock serialises requests; serial lines also keep
the 3.5-character silence between frames. A lost connection or port raises
``BusUnavailable`` and is reopened on the next request.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import trio

from mappers._errors import BusUnavailable, CrcError, DeviceTimeout, ProtocolError
from mappers._serialport import open_serial
from mappers.modbus._config import SerialEndpoint, TcpEndpoint
from mappers.modbus._frame import (
    RtuDecoder,
    TcpDecoder,
    rtu_char_time,
    rtu_frame,
    rtu_frame_gap,
    tcp_frame,
)

__all__ = ["Bus", "BusPool", "SerialBus", "TcpBus"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.0


class Bus:
    """Base: statistics and the lock. ``transact`` sends one request, returns the PDU."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.lock = trio.Lock()
        self.stats: dict[str, int] = {
            "requests": 0,
            "responses": 0,
            "timeouts": 0,
            "crc_errors": 0,
            "protocol_errors": 0,
            "opens": 0,
            "open_failures": 0,
            "disconnects": 0,
            "stray_bytes": 0,
        }
        self.last_request_seconds = 0.0
        self.answered_seconds = 0.0  # sum over answered requests (timing benchmarks)

    def statistics(self) -> dict[str, int]:
        return dict(self.stats)

    async def transact(self, unit: int, pdu: bytes, deadline_s: float) -> bytes:
        async with self.lock:
            self.stats["requests"] += 1
            start = trio.current_time()
            try:
                answer = await self._transact(unit, pdu, deadline_s)
            except DeviceTimeout:
                self.stats["timeouts"] += 1
                raise
            except CrcError:
                self.stats["crc_errors"] += 1
                raise
            except ProtocolError:
                self.stats["protocol_errors"] += 1
                raise
            self.last_request_seconds = trio.current_time() - start
            self.answered_seconds += self.last_request_seconds
            self.stats["responses"] += 1
            return answer

    async def _transact(self, unit: int, pdu: bytes, deadline_s: float) -> bytes:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the connection/port (reopened by the next request)."""


class TcpBus(Bus):
    """Modbus TCP (MBAP), or RTU frames over a TCP socket (``endpoint.rtu``)."""

    def __init__(self, endpoint: TcpEndpoint) -> None:
        super().__init__(endpoint.key)
        self.endpoint = endpoint
        self._stream: trio.SocketStream | None = None
        self._tid = 0

    async def _open(self) -> trio.SocketStream:
        if self._stream is not None:
            return self._stream
        with trio.move_on_after(CONNECT_TIMEOUT) as scope:
            try:
                self._stream = await trio.open_tcp_stream(self.endpoint.host, self.endpoint.port)
            except OSError as exc:
                self.stats["open_failures"] += 1
                raise BusUnavailable(f"{self.key}: {exc.strerror or exc}") from None
        if scope.cancelled_caught or self._stream is None:
            self.stats["open_failures"] += 1
            raise BusUnavailable(f"{self.key}: connect timed out")
        self.stats["opens"] += 1
        return self._stream

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _transact(self, unit: int, pdu: bytes, deadline_s: float) -> bytes:
        stream = await self._open()
        if self.endpoint.rtu:
            return await self._rtu(stream, unit, pdu, deadline_s)
        self._tid = (self._tid + 1) & 0xFFFF
        tid = self._tid
        decoder = TcpDecoder()
        try:
            with trio.move_on_after(deadline_s):
                await stream.send_all(tcp_frame(tid, unit, pdu))
                while True:
                    frame = decoder.next_frame()
                    if frame is None:
                        data = await stream.receive_some(4096)
                        if not data:
                            raise BusUnavailable(f"{self.key}: connection closed by peer")
                        decoder.feed(data)
                        continue
                    rtid, runit, rpdu = frame
                    if rtid != tid:
                        self.stats["stray_bytes"] += len(rpdu) + 7
                        continue  # a late answer to an earlier (timed-out) request
                    if runit != unit:
                        raise ProtocolError(f"answer from unit {runit}, asked {unit}")
                    return rpdu
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self._lost()
            raise BusUnavailable(f"{self.key}: {exc}") from None
        except BusUnavailable:
            await self._lost()
            raise
        except ProtocolError:
            await self._lost()  # out of sync: start a fresh connection
            raise
        raise DeviceTimeout(f"{self.key} unit {unit}: no answer within {deadline_s:.3f} s")

    async def _rtu(
        self, stream: trio.SocketStream, unit: int, pdu: bytes, deadline_s: float
    ) -> bytes:
        decoder = RtuDecoder()
        try:
            with trio.move_on_after(deadline_s):
                await stream.send_all(rtu_frame(unit, pdu))
                while True:
                    frame = decoder.next_frame()
                    if frame is None:
                        data = await stream.receive_some(512)
                        if not data:
                            raise BusUnavailable(f"{self.key}: connection closed by peer")
                        decoder.feed(data)
                        continue
                    runit, rpdu = frame
                    if runit != unit:
                        raise ProtocolError(f"answer from slave {runit}, asked {unit}")
                    return rpdu
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self._lost()
            raise BusUnavailable(f"{self.key}: {exc}") from None
        except (BusUnavailable, ProtocolError):
            await self._lost()
            raise
        await self._lost()  # a late answer would confuse the next request
        raise DeviceTimeout(f"{self.key} slave {unit}: no answer within {deadline_s:.3f} s")

    async def _lost(self) -> None:
        if self._stream is not None:
            self.stats["disconnects"] += 1
        await self.aclose()


class SerialBus(Bus):
    """Modbus RTU on a serial port (pyserial, non-blocking fd driven by trio)."""

    def __init__(self, endpoint: SerialEndpoint) -> None:
        super().__init__(endpoint.key)
        self.endpoint = endpoint
        self._serial: Any = None
        self._fd = -1
        self._last_activity = -1e9
        self._limiter = trio.CapacityLimiter(1)
        e = endpoint
        self.char_time = rtu_char_time(e.baud, e.data_bits, e.parity, e.stop_bits)
        self.frame_gap = rtu_frame_gap(e.baud, e.data_bits, e.parity, e.stop_bits)

    def wire_time(self, request_len: int, response_len: int) -> float:
        """Seconds the request and response take on the wire, plus two gaps."""
        return (request_len + response_len) * self.char_time + 2 * self.frame_gap

    async def _open(self) -> int:
        if self._serial is not None:
            return self._fd
        e = self.endpoint
        try:
            port = await open_serial(
                e.port,
                baud=e.baud,
                data_bits=e.data_bits,
                parity=e.parity,
                stop_bits=e.stop_bits,
                limiter=self._limiter,
            )
        except OSError as exc:  # pyserial's SerialException is an OSError
            self.stats["open_failures"] += 1
            raise BusUnavailable(f"{self.key}: {exc}") from None
        self._serial = port
        self._fd = port.fileno()
        self.stats["opens"] += 1
        return self._fd

    async def aclose(self) -> None:
        if self._serial is not None:
            port, self._serial, self._fd = self._serial, None, -1
            try:
                trio.lowlevel.notify_closing(port.fileno())
            except (OSError, ValueError):
                pass
            port.close()

    async def _lost(self, why: str) -> BusUnavailable:
        if self._serial is not None:
            self.stats["disconnects"] += 1
        await self.aclose()
        return BusUnavailable(f"{self.key}: {why}")

    def _drain(self, fd: int) -> None:
        """Discard whatever is waiting on the line (late answers, noise)."""
        while True:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return
            if not data:
                return
            self.stats["stray_bytes"] += len(data)

    async def _silence(self, fd: int) -> None:
        """Wait until the line has been quiet for the 3.5-character gap."""
        while True:
            wait = self._last_activity + self.frame_gap - trio.current_time()
            if wait <= 0:
                return
            with trio.move_on_after(wait):
                await trio.lowlevel.wait_readable(fd)
                self._drain(fd)
                self._last_activity = trio.current_time()

    async def _transact(self, unit: int, pdu: bytes, deadline_s: float) -> bytes:
        fd = await self._open()
        try:
            await self._silence(fd)
            self._drain(fd)
            frame = rtu_frame(unit, pdu)
            view = memoryview(frame)
            while view:
                await trio.lowlevel.wait_writable(fd)
                try:
                    n = os.write(fd, view)
                except BlockingIOError:
                    continue
                view = view[n:]
            self._last_activity = trio.current_time()
            decoder = RtuDecoder()
            with trio.move_on_after(deadline_s):
                while True:
                    try:
                        got = decoder.next_frame()
                    except ProtocolError:
                        self._last_activity = trio.current_time()
                        raise
                    if got is not None:
                        self._last_activity = trio.current_time()
                        runit, rpdu = got
                        if runit != unit:
                            raise ProtocolError(f"answer from slave {runit}, asked {unit}")
                        return rpdu
                    await trio.lowlevel.wait_readable(fd)
                    try:
                        data = os.read(fd, 512)
                    except BlockingIOError:
                        continue
                    if not data:
                        raise await self._lost("port closed (EOF)")
                    self._last_activity = trio.current_time()
                    decoder.feed(data)
        except OSError as exc:
            raise await self._lost(exc.strerror or str(exc)) from None
        except trio.ClosedResourceError:
            raise await self._lost("port closed") from None
        self._last_activity = trio.current_time()
        raise DeviceTimeout(f"{self.key} slave {unit}: no answer within {deadline_s:.3f} s")


class BusPool:
    """One Bus per physical bus, shared by the devices on it (reference-counted)."""

    def __init__(self) -> None:
        self._buses: dict[str, tuple[Bus, int]] = {}

    def acquire(self, endpoint: TcpEndpoint | SerialEndpoint) -> Bus:
        entry = self._buses.get(endpoint.key)
        if entry is not None:
            bus, refs = entry
            if getattr(bus, "endpoint", endpoint) != endpoint:
                log.warning("bus %s: devices disagree on its settings; keeping the first", bus.key)
            self._buses[endpoint.key] = (bus, refs + 1)
            return bus
        new: Bus = SerialBus(endpoint) if isinstance(endpoint, SerialEndpoint) else TcpBus(endpoint)
        self._buses[endpoint.key] = (new, 1)
        return new

    async def release(self, bus: Bus) -> None:
        entry = self._buses.get(bus.key)
        if entry is None:
            return
        _, refs = entry
        if refs <= 1:
            del self._buses[bus.key]
            await bus.aclose()
        else:
            self._buses[bus.key] = (bus, refs - 1)

    def statistics(self) -> dict[str, dict[str, int]]:
        return {key: bus.statistics() for key, (bus, _) in self._buses.items()}
