from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

import edgeproto
from edgeproto import (
    FrameTooLarge,
    Kind,
    Message,
    ProtocolError,
    UnknownKind,
    decode_message,
    encode_message,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)

messages = st.builds(
    Message,
    kind=st.sampled_from(list(Kind)),
    id=st.integers(0, 2**63 - 1),
    body=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    parent=st.none() | st.integers(0, 2**63 - 1),
    rev=st.none() | st.integers(0, 2**63 - 1),
    res=st.none() | st.text(max_size=30),
    op=st.none() | st.text(max_size=10),
)


@given(messages)
def test_round_trip(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_protocol_error(data: bytes) -> None:
    try:
        decode_message(data)
    except ProtocolError:
        pass


@given(json_values)
def test_random_cbor_values_raise_only_protocol_error(value: object) -> None:
    try:
        decode_message(cbor2.dumps(value))
    except ProtocolError:
        pass


def test_oversized_message_rejected_both_ways() -> None:
    big = Message(Kind.REPORT, body={"blob": b"x" * 2000})
    with pytest.raises(FrameTooLarge):
        encode_message(big, max_size=1000)
    data = encode_message(big)
    with pytest.raises(FrameTooLarge):
        decode_message(data, max_size=1000)


@pytest.mark.parametrize(
    ("wire", "exc", "code"),
    [
        ({"v": 1, "kind": "bogus", "id": 1}, UnknownKind, "unknown-kind"),
        ({"v": 2, "kind": "ping", "id": 1}, ProtocolError, "version"),
        ({"v": 1, "id": 1}, ProtocolError, "bad-field"),
        ({"v": 1, "kind": "ping", "id": -1}, ProtocolError, "bad-field"),
        ({"v": 1, "kind": "ping", "id": 1, "body": [1]}, ProtocolError, "bad-field"),
        ({"v": 1, "kind": "ping", "id": 1, "res": 5}, ProtocolError, "bad-field"),
        ([1, 2, 3], ProtocolError, "malformed"),
    ],
)
def test_invalid_envelopes(wire: object, exc: type[ProtocolError], code: str) -> None:
    with pytest.raises(exc) as info:
        decode_message(cbor2.dumps(wire))
    assert info.value.code == code


def test_unknown_tag_rejected() -> None:
    data = cbor2.dumps(cbor2.CBORTag(9999, 1))
    with pytest.raises(ProtocolError, match="tag"):
        decode_message(data)


def test_unencodable_body() -> None:
    with pytest.raises(ProtocolError) as info:
        encode_message(Message(Kind.PING, body={"x": object()}))
    assert info.value.code == "unencodable"


def test_first_leaf_unwraps_groups() -> None:
    inner = ValueError("x")
    group = BaseExceptionGroup("g", [BaseExceptionGroup("h", [KeyboardInterrupt(), inner])])
    assert edgeproto.first_leaf(group, skip=(KeyboardInterrupt,)) is inner
    assert edgeproto.first_leaf(inner) is inner
