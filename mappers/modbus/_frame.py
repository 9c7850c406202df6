"""Modbus PDUs and ADUs (TCP MBAP, RTU with CRC-16) as bytes in, bytes out. Sans-io.

Only the client side: build requests, recognise and check responses. The decoders
are incremental: ``feed(bytes)`` then ``next_frame()`` returns a frame or None when
the input is incomplete; they refuse input past a size cap.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from mappers._errors import CrcError, DeviceRejected, ProtocolError

__all__ = [
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "Register",
    "RtuDecoder",
    "TcpDecoder",
    "crc16",
    "parse_response",
    "read_request",
    "rtu_frame",
    "tcp_frame",
    "write_request",
]

MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
MAX_WRITE_REGISTERS = 123
MAX_WRITE_BITS = 1968
MAX_ADU = 260


class Register(enum.Enum):
    """The four Modbus tables, named as KubeEdge's visitors name them."""

    COIL = "CoilRegister"
    DISCRETE_INPUT = "DiscreteInputRegister"
    HOLDING = "HoldingRegister"
    INPUT = "InputRegister"

    @property
    def read_function(self) -> int:
        return {"CoilRegister": 1, "DiscreteInputRegister": 2, "HoldingRegister": 3}.get(
            self.value, 4
        )

    @property
    def is_bits(self) -> bool:
        return self in (Register.COIL, Register.DISCRETE_INPUT)

    @property
    def writable(self) -> bool:
        return self in (Register.COIL, Register.HOLDING)

    @property
    def max_read(self) -> int:
        return MAX_READ_BITS if self.is_bits else MAX_READ_REGISTERS


# -- CRC ---------------------------------------------------------------------------


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF)."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc


# -- PDUs --------------------------------------------------------------------------


def read_request(register: Register, address: int, count: int) -> bytes:
    if not 0 <= address <= 0xFFFF or not 1 <= count <= register.max_read:
        raise ValueError(f"bad read {register.value} address={address} count={count}")
    if address + count > 0x10000:
        raise ValueError(f"read past address 65535: {address}+{count}")
    return struct.pack(">BHH", register.read_function, address, count)


def _pack_bits(bits: Sequence[bool]) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def _unpack_bits(data: bytes, count: int) -> list[bool]:
    return [bool(data[i // 8] >> (i % 8) & 1) for i in range(count)]


def write_request(
    register: Register, address: int, values: Sequence[int] | Sequence[bool]
) -> bytes:
    """FC5/FC15 for coils, FC6/FC16 for holding registers (one value → the single form)."""
    if not values:
        raise ValueError("nothing to write")
    if register is Register.COIL:
        bits = [bool(v) for v in values]
        if len(bits) == 1:
            return struct.pack(">BHH", 5, address, 0xFF00 if bits[0] else 0)
        if len(bits) > MAX_WRITE_BITS:
            raise ValueError(f"too many coils to write: {len(bits)}")
        data = _pack_bits(bits)
        return struct.pack(">BHHB", 15, address, len(bits), len(data)) + data
    if register is Register.HOLDING:
        regs = [int(v) for v in values]
        if len(regs) == 1:
            return struct.pack(">BHH", 6, address, regs[0])
        if len(regs) > MAX_WRITE_REGISTERS:
            raise ValueError(f"too many registers to write: {len(regs)}")
        return struct.pack(f">BHHB{len(regs)}H", 16, address, len(regs), 2 * len(regs), *regs)
    raise ValueError(f"{register.value} is read-only in Modbus")


@dataclass(frozen=True)
class ReadResult:
    bits: tuple[bool, ...] = ()
    registers: tuple[int, ...] = ()


def parse_response(request: bytes, response: bytes) -> ReadResult:
    """Check ``response`` answers ``request``; return read data (empty for writes).

    Raises DeviceRejected for an exception response, ProtocolError for anything else
    that does not match.
    """
    if not response:
        raise ProtocolError("empty response PDU")
    fc = request[0]
    rfc = response[0]
    if rfc == fc | 0x80:
        if len(response) != 2:
            raise ProtocolError(f"exception response of {len(response)} bytes")
        raise DeviceRejected(fc, response[1])
    if rfc != fc:
        raise ProtocolError(f"response function {rfc} to request function {fc}")
    if fc in (1, 2, 3, 4):
        count = struct.unpack_from(">H", request, 3)[0]
        if len(response) < 2 or response[1] != len(response) - 2:
            raise ProtocolError("read response byte count does not match its length")
        data = response[2:]
        if fc in (1, 2):
            if len(data) != (count + 7) // 8:
                raise ProtocolError(f"{len(data)} bytes for {count} bits")
            return ReadResult(bits=tuple(_unpack_bits(data, count)))
        if len(data) != 2 * count:
            raise ProtocolError(f"{len(data)} bytes for {count} registers")
        return ReadResult(registers=struct.unpack(f">{count}H", data))
    if fc in (5, 6):
        if response != request:
            raise ProtocolError("write-single echo differs from the request")
        return ReadResult()
    if fc in (15, 16):
        if response[:5] != request[:5] or len(response) != 5:
            raise ProtocolError("write-multiple answer differs from the request")
        return ReadResult()
    raise ProtocolError(f"unsupported function {fc}")


# -- ADUs --------------------------------------------------------------------------


def tcp_frame(transaction_id: int, unit: int, pdu: bytes) -> bytes:
    """MBAP header + PDU."""
    return struct.pack(">HHHB", transaction_id & 0xFFFF, 0, len(pdu) + 1, unit) + pdu


def rtu_frame(slave: int, pdu: bytes) -> bytes:
    """Address + PDU + CRC (low byte first)."""
    body = bytes((slave,)) + pdu
    return body + struct.pack("<H", crc16(body))


class TcpDecoder:
    """MBAP frames from a byte stream: ``(transaction_id, unit, pdu)``."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > 4 * MAX_ADU:
            self._buf.clear()
            raise ProtocolError("receive buffer overflow (no valid MBAP frame)")

    def next_frame(self) -> tuple[int, int, bytes] | None:
        if len(self._buf) < 7:
            return None
        tid, proto, length, unit = struct.unpack_from(">HHHB", self._buf)
        if proto != 0 or not 2 <= length <= 254:
            self._buf.clear()
            raise ProtocolError(f"bad MBAP header protocol={proto} length={length}")
        if len(self._buf) < 6 + length:
            return None
        pdu = bytes(self._buf[7 : 6 + length])
        del self._buf[: 6 + length]
        return tid, unit, pdu


def expected_rtu_length(frame_start: bytes | bytearray) -> int | None:
    """Total length of a response frame from its first bytes, or None if unknown yet."""
    if len(frame_start) < 2:
        return None
    fc = frame_start[1]
    if fc & 0x80:
        return 5
    if fc in (1, 2, 3, 4):
        if len(frame_start) < 3:
            return None
        return 3 + frame_start[2] + 2
    if fc in (5, 6, 15, 16):
        return 8
    raise ProtocolError(f"unknown function code {fc} in RTU response")


class RtuDecoder:
    """RTU response frames from a byte stream: ``(slave, pdu)``.

    RTU has no length field; the length follows from the function code (responses
    only). A CRC mismatch raises CrcError and drops the buffer: the caller should
    wait for line silence before the next request.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > 2 * MAX_ADU:
            self._buf.clear()
            raise ProtocolError("receive buffer overflow (no valid RTU frame)")

    def clear(self) -> None:
        self._buf.clear()

    def next_frame(self) -> tuple[int, bytes] | None:
        try:
            need = expected_rtu_length(self._buf)
        except ProtocolError:
            self._buf.clear()
            raise
        if need is None or len(self._buf) < need:
            return None
        frame = bytes(self._buf[:need])
        del self._buf[:need]
        (got,) = struct.unpack_from("<H", frame, need - 2)
        if crc16(frame[:-2]) != got:
            self._buf.clear()
            raise CrcError(f"CRC mismatch in {frame.hex()}")
        return frame[0], frame[1:-2]


def rtu_char_time(baud: int, data_bits: int = 8, parity: str = "N", stop_bits: float = 1) -> float:
    """Seconds one character takes on the line (start + data + parity + stop bits)."""
    bits = 1 + data_bits + (0 if parity.upper().startswith("N") else 1) + stop_bits
    return bits / baud


def rtu_frame_gap(baud: int, data_bits: int = 8, parity: str = "N", stop_bits: float = 1) -> float:
    """The 3.5-character silence between frames; fixed 1.75 ms above 19,200 baud (spec)."""
    if baud > 19200:
        return 0.00175
    return 3.5 * rtu_char_time(baud, data_bits, parity, stop_bits)
