"""The mappers' decoders and encoders raise only the mappers' declared errors.

Whatever a twin update, a device or a sensor line holds (inf, nan, 10**400, a
5,000-digit string, random bytes split anywhere), the Modbus register codec, the
Modbus frame decoders and the serial line parser either answer or raise a
``MapperError`` subclass with a message, never OverflowError, ValueError or
UnicodeError from deep inside.
"""

from __future__ import annotations

import itertools
import math
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mappers._errors import CodecError, MapperError
from mappers.modbus._codec import DataType, RegisterCodec, format_value, parse_value
from mappers.modbus._frame import (
    Register,
    RtuDecoder,
    TcpDecoder,
    parse_response,
    read_request,
    rtu_frame,
    tcp_frame,
    write_request,
)
from mappers.serial._parse import FieldSpec, LineParser

MANY = settings(max_examples=5_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Past 4,300 digits an int has no str(): such ints are drawn as (sign, exponent) so
# Hypothesis can still print a failing example.
huge_ints = st.sampled_from([(1, 400), (-1, 400), (1, 4400), (-1, 5000)]).map(
    lambda t: t[0] * 10 ** t[1]
)
ABSURD = [
    math.inf, -math.inf, math.nan, 1.7976931348623157e308, -5e-324, -0.0, 2**64, -(2**63) - 1,
    2**128, 10**400, True, False,
    "inf", "-inf", "nan", "NaN", "1e400", "-1e400", "1e-400", "9" * 5000, "-" + "9" * 5000,
    "0x" + "f" * 5000, "1" + "0" * 400, "3.4028236e38", "1_000", "²", "", " ", "\x00",
    "true", "on", "0b101", "1e308", "-1e308", "٣", "7" * 4301,
]  # fmt: skip
# anything a twin value or a config number can be, from ordinary to absurd
values = st.one_of(
    st.integers(),
    st.floats(),
    st.sampled_from(ABSURD),
    huge_ints,
    st.text(alphabet="0123456789.eE+-xXabcdefinINF_ ", max_size=30),
    st.text(max_size=10),
)

DATA_TYPES = list(DataType)
COUNTS = [0, 1, 2, 4, 5, -1]
SCALES = [1.0, 0.1, -2.5, 10.0, 1e-300, 1e300, 5e-324, 0.0, math.inf, math.nan, 10**400]
OFFSETS = [0.0, -40.0, 1e308, -math.inf, 10**400]
ENCODINGS = ["utf-8", "ascii", "utf-16", "no-such-codec"]
CODEC_SHAPES = list(
    itertools.product(DATA_TYPES, COUNTS, [False, True], [False, True], SCALES, OFFSETS, ENCODINGS)
)
# every data type / limit / byte order / word order / scale / offset / encoding
# combination, and random float scales and offsets
codec_shapes = st.one_of(
    st.sampled_from(CODEC_SHAPES),
    st.tuples(
        st.sampled_from(DATA_TYPES), st.sampled_from(COUNTS), st.booleans(), st.booleans(),
        st.floats(), st.floats(), st.just("utf-8"),
    ),
)  # fmt: skip


def make_codec(shape: tuple[Any, ...]) -> RegisterCodec | CodecError:
    """The codec for ``shape``, or the CodecError refusing it."""
    dt, count, byte_swap, word_swap, scale, offset, encoding = shape
    try:
        return RegisterCodec(dt, count, byte_swap, word_swap, scale, offset, encoding)
    except CodecError as exc:
        assert str(exc)
        return exc


codecs = codec_shapes.map(make_codec)


def as_text(value: object) -> str:
    """``value`` as a line or twin string would carry it (a huge int: its digits)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and abs(value).bit_length() > 14_000:
        return "-" * (value < 0) + "9" * 5000
    return str(value)


def check_registers(codec: RegisterCodec, regs: list[int]) -> None:
    assert len(regs) == codec.count
    assert all(isinstance(r, int) and 0 <= r <= 0xFFFF for r in regs)


@MANY
@given(codecs, values)
def test_register_encode_raises_only_codec_errors(
    codec: RegisterCodec | CodecError, value: object
) -> None:
    if isinstance(codec, CodecError):
        assert str(codec)
        return
    try:
        regs = codec.encode(value)  # type: ignore[arg-type]
    except CodecError as exc:
        assert str(exc)
    else:
        check_registers(codec, regs)
    try:
        bits = codec.encode_bits(value)  # type: ignore[arg-type]
    except CodecError as exc:
        assert str(exc)
    else:
        assert len(bits) == codec.count and all(isinstance(b, bool) for b in bits)


@MANY
@given(
    codecs,
    st.binary(max_size=18),
    st.one_of(st.none(), st.sampled_from([-1, 0x10000, 2**64]), huge_ints),
    st.sampled_from(["", "int", "float", "double", "boolean", "string", "INT"]),
)
def test_register_decode_raises_only_codec_errors(
    codec: RegisterCodec | CodecError, data: bytes, stray: int | None, twin_type: str
) -> None:
    if isinstance(codec, CodecError):
        return
    # registers as a device sends them (any 16-bit words), or one out of range
    regs = list(struct.unpack(f">{len(data) // 2}H", data[: len(data) // 2 * 2]))
    if stray is not None and regs:
        regs[len(data) % len(regs)] = stray
    bits = [bool(b & 1) for b in data[:9]]
    for decode, raw in ((codec.decode, regs), (codec.decode_bits, bits)):
        try:
            value = decode(raw)  # type: ignore[operator]
        except CodecError as exc:
            assert str(exc)
        else:
            assert isinstance(format_value(value, twin_type), str)
            # what was read can be written back (or is refused with a CodecError)
            try:
                check_registers(codec, codec.encode(value))
            except CodecError as exc:
                assert str(exc)


@MANY
@given(values, st.sampled_from(list(DataType)), st.sampled_from(["", "int", "float", "boolean"]))
def test_twin_value_text_raises_only_codec_errors(
    value: object, data_type: DataType, twin_type: str
) -> None:
    try:
        parsed = parse_value(as_text(value), data_type)
    except CodecError as exc:
        assert str(exc)
    else:
        assert isinstance(format_value(parsed, twin_type), str)
    try:
        assert isinstance(format_value(value, twin_type), str)  # type: ignore[arg-type]
    except CodecError as exc:
        assert str(exc)


# -- frames ------------------------------------------------------------------------

REQUESTS = [
    read_request(register, address, count)
    for register in Register
    for address in (0, 10)
    for count in (1, 2, 3, 8, 16, 125)
] + [
    write_request(register, 3, values)
    for register in (Register.COIL, Register.HOLDING)
    for values in ([1], [0], [1, 0, 1], list(range(10)))
]  # fmt: skip
# PDUs a device may answer with: reads (bits, registers), write echoes, exceptions,
# unknown functions; as whole frames, cut short, or with a byte flipped
PDUS = [
    bytes([fc, n]) + bytes(range(n)) for fc in (1, 2, 3, 4) for n in (0, 1, 2, 4, 7)
] + [
    bytes([5, 0, 3, 0xFF, 0]), bytes([6, 0, 10, 1, 0x41]), bytes([15, 0, 0, 0, 3]),
    bytes([16, 0, 11, 0, 2]), bytes([0x83, 2]), bytes([0x81, 1]), bytes([0x90, 4]),
    bytes([7]), bytes([0x2B, 0x0E, 1]), bytes([3, 250]) + bytes(250), b"",
]  # fmt: skip


def framed(frame: Any) -> list[bytes]:
    whole = [frame(pdu) for pdu in PDUS]
    cut = [f[: len(f) // 2] for f in whole]
    flipped = [f[:-1] + bytes([f[-1] ^ 0x5A]) for f in whole if f]
    return whole + cut + flipped


def streams(frames: list[bytes]) -> st.SearchStrategy[tuple[bytes, list[int]]]:
    """Valid, truncated and corrupted frames and garbage, and where reads end."""
    parts = st.lists(st.one_of(st.sampled_from(frames), st.binary(max_size=12)), max_size=5)
    cuts = st.lists(st.integers(0, 1400), max_size=4)
    return st.tuples(parts.map(b"".join), cuts).map(
        lambda t: (t[0], sorted(min(c, len(t[0])) for c in t[1]))
    )


def feed_all(decoder: TcpDecoder | RtuDecoder, chunks: list[bytes]) -> list[object]:
    out: list[object] = []
    for chunk in chunks:
        try:
            decoder.feed(chunk)
            while (frame := decoder.next_frame()) is not None:
                out.append(frame)
        except MapperError as exc:  # the decoder dropped its buffer; go on
            assert str(exc)
            out.append(type(exc))
    return out


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(edges)]


@MANY
@given(streams(framed(lambda pdu: tcp_frame(7, 1, pdu))))
def test_mbap_decoder_raises_only_protocol_errors(case: tuple[bytes, list[int]]) -> None:
    stream, cuts = case
    feed_all(TcpDecoder(), chunked(stream, cuts))
    # every boundary: one byte at a time
    feed_all(TcpDecoder(), [stream[i : i + 1] for i in range(len(stream))])


@MANY
@given(streams(framed(lambda pdu: rtu_frame(1, pdu))))
def test_rtu_decoder_raises_only_protocol_errors(case: tuple[bytes, list[int]]) -> None:
    stream, cuts = case
    feed_all(RtuDecoder(), chunked(stream, cuts))
    feed_all(RtuDecoder(), [stream[i : i + 1] for i in range(len(stream))])


@MANY
@given(st.sampled_from(REQUESTS), st.one_of(st.sampled_from(PDUS), st.binary(max_size=8)))
def test_responses_raise_only_protocol_errors(request: bytes, response: bytes) -> None:
    try:
        parse_response(request, response)
    except MapperError as exc:
        assert str(exc)


# -- serial lines --------------------------------------------------------------------


FIELD_SHAPES = list(
    itertools.product(["int", "float", "bool", "string"], [*SCALES, -1.5, 3], OFFSETS)
)


def make_field(index: int, shape: tuple[str, Any, Any]) -> FieldSpec | CodecError:
    """A field of ``shape`` (type, scale, offset), or the CodecError refusing it."""
    data_type, scale, offset = shape
    try:
        return FieldSpec(
            f"f{index}",
            index=index,
            group="g" if index == 0 else None,
            data_type=data_type,
            scale=scale,
            value_offset=offset,
        )
    except CodecError as exc:
        return exc


def fields(index: int = 0) -> st.SearchStrategy[FieldSpec | CodecError]:
    """A field of every type with any scale and offset (or the CodecError refusing it)."""
    shapes = st.one_of(
        st.sampled_from(FIELD_SHAPES),
        st.tuples(st.sampled_from(["int", "float"]), st.floats(), st.floats()),
    )
    return shapes.map(lambda shape: make_field(index, shape))


@MANY
@given(fields(), values)
def test_field_convert_raises_only_codec_errors(
    field: FieldSpec | CodecError, value: object
) -> None:
    if isinstance(field, CodecError):
        assert str(field) and len(str(field)) < 300
        return
    text = as_text(value)
    try:
        out = field.convert(text)
    except CodecError as exc:
        assert str(exc) and len(str(exc)) < 300
    else:
        assert not isinstance(out, float) or math.isfinite(out)


@MANY
@given(
    st.tuples(fields(0), fields(1), fields(2)),
    st.one_of(
        st.binary(max_size=60),
        st.lists(values.map(as_text), max_size=4).map(lambda xs: ",".join(xs).encode()),
        values.map(as_text).map(lambda x: f"=={x} ".encode()),
    ),
)
def test_line_parser_raises_only_codec_errors(
    specs: tuple[FieldSpec | CodecError, ...], line: bytes
) -> None:
    good = [f for f in specs if isinstance(f, FieldSpec)]
    if not good:
        return
    parsers = [LineParser(good)]
    if good[0].group is not None:
        parsers.append(LineParser(good[:1], delimiter=None, regex=r"=(?P<g>\S+)"))
    for parser in parsers:
        try:
            parser.parse(line)
        except CodecError as exc:
            assert str(exc) and len(str(exc)) < 300
