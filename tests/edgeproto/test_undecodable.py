"""A message the decoder refuses still names itself (id and kind) when its
envelope does, so the peer can be told which message was refused (defect 13:
an undecodable report was answered with an error naming no report, and the
agent's outbox never let go of it)."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproto import Kind, Message, ProtocolError, decode_message, encode_message


def deep(depth: int) -> Any:
    v: Any = 0
    for _ in range(depth):
        v = [v]
    return v


def test_a_report_too_deep_to_decode_names_its_id() -> None:
    data = encode_message(
        Message(Kind.REPORT, id=41, res="nodes//n", op="event", body={"x": deep(400)})
    )
    with pytest.raises(ProtocolError) as info:
        decode_message(data)
    assert (info.value.message_id, info.value.message_kind) == (41, "report")


@pytest.mark.parametrize(
    ("wire", "named"),
    [
        ({"v": 1, "id": 5, "kind": "report", "body": 7}, (5, "report")),  # body not a map
        ({"v": 1, "id": 5, "kind": "report", "res": 3}, (5, "report")),
        ({"v": 1, "id": 5, "kind": "report", "body": cbor2.CBORTag(99, 1)}, (5, "report")),
        ({"v": 2, "id": 5, "kind": "report", "body": 7}, (None, None)),  # another version
        ({"v": 1, "id": -5, "kind": "report", "body": 7}, (None, None)),
        ({"v": 1, "id": 5, "kind": ["report"], "body": 7}, (None, None)),
        ({"v": 1, "kind": "nonsense", "id": 5}, (None, None)),
        ({"body": deep(500), "v": 1, "id": 5, "kind": "report"}, (None, None)),  # named too late
    ],
)
def test_what_a_refused_message_is_named_by(wire: dict[str, Any], named: tuple[Any, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_message(cbor2.dumps(wire))
    assert (info.value.message_id, info.value.message_kind) == named


def test_an_indefinite_length_map_names_itself_too() -> None:
    head = cbor2.dumps({"v": 1, "id": 6, "kind": "report"})[1:]  # its entries
    data = b"\xbf" + head + cbor2.dumps("body") + cbor2.dumps(deep(450)) + b"\xff"
    with pytest.raises(ProtocolError) as info:
        decode_message(data)
    assert (info.value.message_id, info.value.message_kind) == (6, "report")


@settings(max_examples=500)
@given(st.integers(0, 2**63 - 1), st.integers(1, 600), st.binary(max_size=64))
def test_any_body_decodes_or_the_error_names_the_report(seq: int, depth: int, junk: bytes) -> None:
    """Whatever follows the envelope's first entries, decoding either works or
    raises a ProtocolError naming the report."""
    msg = Message(Kind.REPORT, id=seq, res="nodes//n", op="status", body={"d": deep(depth)})
    data = encode_message(msg, max_size=1 << 30)
    for frame in (data, data[:-1], data + junk, data[: len(data) // 2]):
        try:
            decode_message(frame, max_size=1 << 30)
        except ProtocolError as exc:
            assert (exc.message_id, exc.message_kind) == (seq, "report"), frame[:40]
