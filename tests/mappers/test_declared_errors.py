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

MANY = settings(max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (past 4,300 digits an int has no str(); drawn as exponents so Hypothesis can print them)
huge_ints = st.one_of(
    st.sampled_from([2**64, -(2**63) - 1, 2**128]),
    st.tuples(st.sampled_from([1, -1]), st.sampled_from([400, 4400, 5000])).map(
        lambda t: t[0] * 10 ** t[1]
    ),
)
HUGE_FLOATS = [math.inf, -math.inf, math.nan, 1.7976931348623157e308, 5e-324, -0.0]
EDGE_TEXTS = [
    "inf", "-inf", "nan", "NaN", "1e400", "-1e400", "1e-400", "9" * 5000, "-" + "9" * 5000,
    "0x" + "f" * 5000, "1" + "0" * 400, "3.4028236e38", "1_000", "²", "", " ", "\x00",
    "true", "on", "0b101", "1e308", "-1e308", "٣",
]  # fmt: skip

# anything a twin value or a config number can be, from ordinary to absurd
values = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    huge_ints,
    st.floats(),
    st.sampled_from(HUGE_FLOATS),
    st.booleans(),
    st.sampled_from(EDGE_TEXTS),
    st.text(max_size=20),
    st.text(alphabet="0123456789.eE+-xXabcdefinINF_ ", max_size=30),
    st.integers(min_value=4000, max_value=6000).map(lambda n: "7" * n),
)
numbers = st.one_of(
    st.floats(),
    st.sampled_from([1.0, 0.1, 0.5, -2.5, 10.0, 1e-300, 1e300, 0.0]),
    huge_ints,
    st.sampled_from(HUGE_FLOATS),
    st.integers(min_value=-1000, max_value=1000),
)


@st.composite
def codecs(draw: st.DrawFn) -> RegisterCodec | CodecError:
    """Every data type, byte order, word order, limit, scale and offset (or the
    CodecError refusing that combination)."""
    try:
        return RegisterCodec(
            data_type=draw(st.sampled_from(list(DataType))),
            count=draw(st.sampled_from([0, 0, 1, 2, 3, 4, 5, 8, -1])),
            byte_swap=draw(st.booleans()),
            word_swap=draw(st.booleans()),
            scale=draw(numbers),
            value_offset=draw(st.one_of(st.just(0.0), numbers)),
            encoding=draw(st.sampled_from(["utf-8", "utf-8", "ascii", "utf-16", "latin-1", "x"])),
        )
    except CodecError as exc:
        return exc


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
@given(codecs(), values)
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
    codecs(),
    st.lists(st.one_of(st.integers(0, 0xFFFF), st.integers(), huge_ints), max_size=9),
    st.lists(st.booleans(), max_size=9),
    st.sampled_from(["", "int", "float", "double", "boolean", "string", "INT"]),
)
def test_register_decode_raises_only_codec_errors(
    codec: RegisterCodec | CodecError, regs: list[int], bits: list[bool], twin_type: str
) -> None:
    if isinstance(codec, CodecError):
        return
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

requests = st.one_of(
    st.builds(
        read_request,
        st.sampled_from(list(Register)),
        st.integers(0, 0xFF00),
        st.integers(1, 125),
    ),
    st.builds(
        write_request,
        st.sampled_from([Register.COIL, Register.HOLDING]),
        st.integers(0, 0xFF00),
        st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=10),
    ),
)
pdus = st.one_of(
    st.binary(min_size=1, max_size=30),
    st.tuples(st.integers(1, 16), st.binary(max_size=12)).map(lambda t: bytes([t[0]]) + t[1]),
    st.tuples(st.integers(1, 4), st.binary(max_size=12)).map(
        lambda t: bytes([t[0], len(t[1])]) + t[1]
    ),
)


@st.composite
def streams(draw: st.DrawFn, frame: object) -> tuple[bytes, list[int]]:
    """Valid frames around a PDU, garbage and truncated frames, and where to cut them."""
    parts = draw(
        st.lists(
            st.one_of(
                pdus.map(frame),  # type: ignore[arg-type]
                st.binary(max_size=12),
                pdus.map(frame).map(lambda b: b[: len(b) // 2]),  # type: ignore[arg-type]
            ),
            max_size=5,
        )
    )
    stream = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    return stream, cuts


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
@given(streams(lambda pdu: tcp_frame(7, 1, pdu)))
def test_mbap_decoder_raises_only_protocol_errors(case: tuple[bytes, list[int]]) -> None:
    stream, cuts = case
    feed_all(TcpDecoder(), chunked(stream, cuts))
    # every boundary: one byte at a time
    feed_all(TcpDecoder(), [stream[i : i + 1] for i in range(len(stream))])


@MANY
@given(streams(lambda pdu: rtu_frame(1, pdu)))
def test_rtu_decoder_raises_only_protocol_errors(case: tuple[bytes, list[int]]) -> None:
    stream, cuts = case
    feed_all(RtuDecoder(), chunked(stream, cuts))
    feed_all(RtuDecoder(), [stream[i : i + 1] for i in range(len(stream))])


@MANY
@given(requests, st.one_of(pdus, st.binary(max_size=8)))
def test_responses_raise_only_protocol_errors(request: bytes, response: bytes) -> None:
    try:
        parse_response(request, response)
    except MapperError as exc:
        assert str(exc)


# -- serial lines --------------------------------------------------------------------


@st.composite
def fields(draw: st.DrawFn, index: int = 0) -> FieldSpec | CodecError:
    """A field of every type with any scale and offset (or the CodecError refusing it)."""
    try:
        return FieldSpec(
            f"f{index}",
            index=index,
            group="g" if index == 0 else None,
            data_type=draw(st.sampled_from(["int", "float", "bool", "string"])),
            scale=draw(numbers),
            value_offset=draw(st.one_of(st.just(0.0), numbers)),
        )
    except CodecError as exc:
        return exc


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
