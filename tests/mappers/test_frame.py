"""Modbus ADU/PDU codec: CRC, framing split at every byte boundary, responses checked."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mappers._errors import CrcError, DeviceRejected, ProtocolError
from mappers.modbus._frame import (
    Register,
    RtuDecoder,
    TcpDecoder,
    crc16,
    parse_response,
    read_request,
    rtu_frame,
    rtu_frame_gap,
    tcp_frame,
    write_request,
)


def test_crc_known_vector() -> None:
    # read holding registers, slave 1, address 0, count 1: 01 03 00 00 00 01 84 0A
    assert rtu_frame(1, read_request(Register.HOLDING, 0, 1)).hex() == "010300000001840a"
    assert crc16(b"123456789") == 0x4B37


def test_rtu_decoder_at_every_split() -> None:
    frame = rtu_frame(2, bytes([3, 4, 0, 1, 0, 2]))
    stream = frame + rtu_frame(2, bytes([0x83, 2]))
    for cut in range(len(stream) + 1):
        dec = RtuDecoder()
        out = []
        for part in (stream[:cut], stream[cut:]):
            dec.feed(part)
            while (f := dec.next_frame()) is not None:
                out.append(f)
        assert out == [(2, bytes([3, 4, 0, 1, 0, 2])), (2, bytes([0x83, 2]))]


def test_rtu_crc_error() -> None:
    frame = bytearray(rtu_frame(1, bytes([3, 2, 0, 7])))
    frame[-1] ^= 0xFF
    dec = RtuDecoder()
    dec.feed(bytes(frame))
    with pytest.raises(CrcError):
        dec.next_frame()


@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 247),
    st.binary(min_size=1, max_size=253),
    st.integers(0, 40),
)
def test_tcp_decoder_any_split(tid: int, unit: int, pdu: bytes, cut: int) -> None:
    stream = tcp_frame(tid, unit, pdu) * 2
    cut = min(cut, len(stream))
    dec = TcpDecoder()
    out = []
    for part in (stream[:cut], stream[cut:]):
        dec.feed(part)
        while (f := dec.next_frame()) is not None:
            out.append(f)
    assert out == [(tid, unit, pdu)] * 2


def test_tcp_decoder_rejects_garbage() -> None:
    dec = TcpDecoder()
    dec.feed(b"\x00\x01\x12\x34\x00\x05\x01\x03")
    with pytest.raises(ProtocolError):
        dec.next_frame()


def test_responses() -> None:
    req = read_request(Register.HOLDING, 10, 2)
    assert parse_response(req, bytes([3, 4, 0, 1, 0xFF, 0xFF])).registers == (1, 0xFFFF)
    with pytest.raises(DeviceRejected) as info:
        parse_response(req, bytes([0x83, 2]))
    assert info.value.exception_code == 2 and "ILLEGAL_DATA_ADDRESS" in str(info.value)
    with pytest.raises(ProtocolError):
        parse_response(req, bytes([3, 2, 0, 1]))
    bits = read_request(Register.COIL, 0, 10)
    assert parse_response(bits, bytes([1, 2, 0b101, 0b10])).bits == (
        True,
        False,
        True,
        False,
        False,
        False,
        False,
        False,
        False,
        True,
    )
    w = write_request(Register.HOLDING, 10, [321])
    assert w == bytes([6, 0, 10, 1, 0x41])
    assert parse_response(w, w).registers == ()
    wm = write_request(Register.HOLDING, 11, [1, 2])
    assert wm[0] == 16 and parse_response(wm, wm[:5]).registers == ()
    assert write_request(Register.COIL, 3, [True]) == bytes([5, 0, 3, 0xFF, 0])
    assert write_request(Register.COIL, 0, [True, False, True])[0] == 15
    with pytest.raises(ValueError):
        write_request(Register.INPUT, 0, [1])


def test_frame_gap() -> None:
    assert rtu_frame_gap(9600) == pytest.approx(3.5 * 10 / 9600)
    assert rtu_frame_gap(9600, parity="E") == pytest.approx(3.5 * 11 / 9600)
    assert rtu_frame_gap(115200) == 0.00175


def test_line_splitter_every_split_and_overflow() -> None:
    from mappers.serial._parse import LineSplitter

    stream = b"1,2\r\n" + b"x" * 40 + b"\n3,4\n"
    for cut in range(len(stream) + 1):
        sp = LineSplitter(max_line=16)
        lines = sp.feed(stream[:cut]) + sp.feed(stream[cut:])
        assert lines == [b"1,2", b"3,4"]
        assert sp.overflows == 1


@given(
    st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b), max_size=10),
    st.integers(0, 400),
)
def test_line_splitter_any_input(lines: list[bytes], cut: int) -> None:
    from mappers.serial._parse import LineSplitter

    stream = b"".join(line + b"\n" for line in lines)
    sp = LineSplitter(max_line=64)
    got = sp.feed(stream[:cut]) + sp.feed(stream[cut:])
    assert got == [line.rstrip(b"\r") for line in lines]


@given(st.binary(max_size=80))
def test_line_parser_only_raises_codec_errors(line: bytes) -> None:
    from mappers._errors import CodecError
    from mappers.serial._parse import FieldSpec, LineParser

    csv = LineParser([FieldSpec("t", index=0), FieldSpec("ok", index=2, data_type="bool")])
    rx = LineParser(
        [FieldSpec("t", group="t", data_type="int")], delimiter=None, regex=r"T=(?P<t>\S+)"
    )
    for parser in (csv, rx):
        try:
            parser.parse(line)
        except CodecError:
            pass
