"""Edge events: whatever the agent accepts from ``$hw/events/upload`` goes over
the wire and becomes an Event at the gateway (its real decoder and
``edge_event``); whatever the gateway could not use is refused at the edge with
an :class:`EventError`, and nothing else is raised."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudgateway._events import edge_event
from edgeproto import Kind, Message, decode_message, encode_message, events
from edgeproto.events import EventError

TEMPLATES = ["@", '{"v":@}', "[1,@]", '{"a":[{"b":@}]}']
LEAVES = [
    lambda n: "[" * n + "]" * n,  # the 400-deep array that stalled the outbox
    lambda n: '{"a":' * n + "1" + "}" * n,
    lambda n: "9" * (n % 5000 + 1),
    lambda n: json.dumps("x" * 3 * n),  # past the 8 KiB upload limit too
    lambda n: json.dumps(chr(n % 0x110000)),  # lone surrogates too
    lambda n: json.dumps(chr(n % 0x110000), ensure_ascii=False),
    lambda n: f"{n}.5e{n % 400}",
    *(
        (lambda n, v=v: v)
        for v in ["NaN", "-Infinity", "1e999", '{"\\udfff":1}', "1.5", "null", "{"]
    ),
]  # fmt: skip


def build(seed: int) -> tuple[str, bytes]:
    """``(what, payload)`` for ``seed``: a template, a leaf and its size, a topic
    suffix length; one time in eight, the seed's own bytes as payload."""
    seed, what_len = divmod(seed, 203)
    what = "w" * what_len
    if seed % 8 == 7:
        return what, (seed >> 3).to_bytes(16, "little").rstrip(b"\0")
    seed, template = divmod(seed >> 3, len(TEMPLATES))
    seed, leaf = divmod(seed, len(LEAVES))
    text = TEMPLATES[template].replace("@", LEAVES[leaf](seed % (3000 if seed % 2 else 80)))
    return what, text.encode("utf-8", "surrogatepass")


def through_the_gateway(what: str, payload: bytes) -> dict[str, object]:
    """The path of an accepted upload: the report body, CBOR on the wire, the
    gateway's decoder and its Event builder."""
    body = events.event_body(what, events.parse_upload(what, payload), 1_700_000_000_000)
    frame = encode_message(Message(Kind.REPORT, id=7, body=body, res="nodes/n", op="event"))
    return edge_event("n", 7, decode_message(frame).body)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 2**128).map(build))
def test_what_the_edge_accepts_the_gateway_keeps(upload: tuple[str, bytes]) -> None:
    what, payload = upload
    try:
        event = through_the_gateway(what, payload)
    except EventError:
        return
    assert event["kind"] == "Event"


def test_the_stalling_payloads_are_refused_at_the_edge() -> None:
    """The reports that stalled a board's outbox (undecodable at the gateway) or
    killed the twin's writer (not encodable)."""
    for bad in (b"[" * 400 + b"]" * 400, b"[" * 65 + b"]" * 65, b'{"s": "\\ud800"}'):
        with pytest.raises(EventError):
            events.parse_upload("alarm", bad)
    with pytest.raises(EventError):
        events.parse_upload("", b"{}")
    with pytest.raises(EventError):
        events.parse_upload("x" * 201, b"{}")
    with pytest.raises(EventError):
        events.check_event_body({"topic": "a", "payload": 1, "timestamp": 10**30})
    # Not strict JSON: kept as the text it is.
    assert events.parse_upload("t", b'{"t": NaN}') == '{"t": NaN}'
    assert events.parse_upload("t", b"[1e999]") == "[1e999]"
    assert events.parse_upload("t", b"[" * 64 + b"]" * 64) is not None
    assert through_the_gateway("alarm/overheat", b'{"temp":91}')["message"] == '{"temp":91}'
