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

deep = st.builds(
    lambda n, o: o[0] * n + o[1] + o[2] * n,
    st.integers(0, 3000),
    st.sampled_from([("[", "", "]"), ('{"a":', "1", "}"), ("[", '"x"', "]")]),
)
leaves = st.one_of(
    deep,
    st.sampled_from(["NaN", "-Infinity", "1e999", '"\\ud800"', '{"\\udfff":1}', "1.5", "null"]),
    st.integers(1, 5000).map(lambda n: "9" * n),
    st.text(max_size=20).map(json.dumps),
    st.floats().map(json.dumps),
)
payloads = st.one_of(
    st.builds(lambda t, v: t.replace("@", v).encode("utf-8", "surrogatepass"),
              st.sampled_from(["@", '{"v":@}', "[1,@]", '{"a":[{"b":@}]}']), leaves),
    st.binary(max_size=64),
    st.integers(8000, 9000).map(lambda n: b"x" * n),
)  # fmt: skip


def through_the_gateway(what: str, payload: bytes) -> dict[str, object]:
    """The path of an accepted upload: the report body, CBOR on the wire, the
    gateway's decoder and its Event builder."""
    body = events.event_body(what, events.parse_upload(what, payload), 1_700_000_000_000)
    frame = encode_message(Message(Kind.REPORT, id=7, body=body, res="nodes/n", op="event"))
    return edge_event("n", 7, decode_message(frame).body)


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(min_size=0, max_size=210), payloads)
def test_what_the_edge_accepts_the_gateway_keeps(what: str, payload: bytes) -> None:
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
