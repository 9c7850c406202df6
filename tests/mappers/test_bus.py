"""SerialBus on a socat pty pair with a hand-driven slave on the other end: the
inter-frame silence is kept, late answers are drained, a wrong slave is an error."""

from __future__ import annotations

import os
import time

import pytest
import trio

from mappers._errors import DeviceTimeout, ProtocolError
from mappers.modbus._bus import SerialBus
from mappers.modbus._config import SerialEndpoint
from mappers.modbus._frame import Register, RtuDecoder, read_request, rtu_frame
from tests.mappers.conftest import PtyPair


class Slave:
    """Answers read-holding requests on the far end of the pty; records timing."""

    def __init__(self, path: str, answer_as: int | None = None, delay: float = 0.0) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.answer_as = answer_as
        self.delay = delay
        self.arrivals: list[float] = []
        self.sent: list[float] = []

    async def run(self) -> None:
        buf = b""
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            buf += os.read(self.fd, 256)
            if len(buf) < 8:
                continue
            self.arrivals.append(time.monotonic())
            slave, req, buf = buf[0], buf[1:6], buf[8:]
            count = int.from_bytes(req[3:5], "big")
            pdu = bytes([3, 2 * count]) + b"\x00\x07" * count
            await trio.sleep(self.delay)  # a slow device: the behaviour under test
            os.write(self.fd, rtu_frame(self.answer_as or slave, pdu))
            self.sent.append(time.monotonic())

    def close(self) -> None:
        os.close(self.fd)


async def test_gap_between_frames_is_kept(pty_pair: PtyPair, nursery: trio.Nursery) -> None:
    slave = Slave(pty_pair.b)
    nursery.start_soon(slave.run)
    bus = SerialBus(SerialEndpoint(pty_pair.a, baud=9600))
    pdu = read_request(Register.HOLDING, 0, 2)
    try:
        for _ in range(10):
            answer = await bus.transact(1, pdu, 1.0)
            assert answer == bytes([3, 4, 0, 7, 0, 7])
        gaps = [nxt - sent for sent, nxt in zip(slave.sent, slave.arrivals[1:], strict=False)]
        assert len(gaps) == 9
        assert min(gaps) >= bus.frame_gap  # 3.65 ms at 9600 8N1
    finally:
        await bus.aclose()
        slave.close()


async def test_late_answer_is_drained_and_wrong_slave_rejected(
    pty_pair: PtyPair, nursery: trio.Nursery
) -> None:
    slave = Slave(pty_pair.b, delay=0.15)
    nursery.start_soon(slave.run)
    bus = SerialBus(SerialEndpoint(pty_pair.a, baud=115200))
    pdu = read_request(Register.HOLDING, 0, 1)
    try:
        with pytest.raises(DeviceTimeout):
            await bus.transact(1, pdu, 0.05)
        slave.delay = 0.0
        # The late answer reaches our end of the line; it must not be taken.
        with trio.fail_after(5):
            await trio.lowlevel.wait_readable(bus._fd)
        assert await bus.transact(1, pdu, 1.0) == bytes([3, 2, 0, 7])
        assert bus.statistics()["stray_bytes"] == 7
        slave.answer_as = 9
        with pytest.raises(ProtocolError, match="slave 9"):
            await bus.transact(1, pdu, 1.0)
    finally:
        await bus.aclose()
        slave.close()


def test_rtu_decoder_resyncs_after_crc_error() -> None:
    dec = RtuDecoder()
    bad = bytearray(rtu_frame(1, bytes([3, 2, 0, 7])))
    bad[3] ^= 1
    dec.feed(bytes(bad))
    with pytest.raises(ProtocolError):
        dec.next_frame()
    dec.feed(rtu_frame(1, bytes([3, 2, 0, 8])))
    assert dec.next_frame() == (1, bytes([3, 2, 0, 8]))
