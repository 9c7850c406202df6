"""Every decoder of ``edgeproto.twin`` raises only :class:`TwinError` (edgeproto's
declared error for twin requests), whatever the input: deep nesting, huge
numbers, NaN and infinities, long strings, bytes that are not UTF-8.

20,000 examples, each fed to every decoder. An example is a hostile JSON value
put in one field of a request or stored row (``TEMPLATES``), or raw bytes: two
or three draws, so that Hypothesis spends its time on examples, not on
generating them."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeproto import twin as tw
from edgeproto.twin import TwinError

# "@" is where the hostile value goes.
TEMPLATES = [
    "@",
    '{"event_id":@,"timestamp":1,"twin":{}}',
    '{"event_id":"e","timestamp":@,"state":"on"}',
    '{"event_id":"e","state":@}',
    '{"event_id":"e","twin":@}',
    '{"event_id":"e","twin":{"p":@}}',
    '{"twin":{"p":{"actual":@}}}',
    '{"twin":{"p":{"expected":{"value":@}}}}',
    '{"twin":{"p":{"actual":{"value":"1","metadata":@}}}}',
    '{"twin":{"p":{"actual":{"value":"1","metadata":{"timestamp":@}}}}}',
    '{"twin":{"p":{"metadata":{"type":@}}}}',
    '{"twin":{"p":{"optional":@}}}',
    '{"twin":{"p":{"expected_version":@}}}',
    '{"twin":{"p":{"actual_version":{"cloud":@,"edge":1}}}}',
    '{"twin":{@:{"actual":{"value":"1"}}}}',
    # stored rows (property_from_row) and messages (property_from_msg)
    '[@,1,"2",3,"int",1,null,null]',
    '["1",@,"2",3,"int",1,null,null]',
    '["1",1,@,3,"int",1,null,null]',
    '["1",1,"2",@,"int",1,null,null]',
    '["1",1,"2",3,@,1,[1,2],[3,4]]',
    '["1",1,"2",3,"int",@,null,null]',
    '["1",1,"2",3,"int",1,@,null]',
    '["1",1,"2",3,"int",1,[1,2],@]',
    '["1",1,"2",3,"int",1,[@,2],null]',
    '{"expected":{"value":"x","metadata":{"timestamp":@}},"metadata":{"type":"int"}}',
    '{"actual":{"value":"x"},"expected_version":{"cloud":1,"edge":@}}',
]

deep = st.builds(
    lambda n, o: o[0] * n + o[1] + o[2] * n,
    st.integers(0, 40_000),
    st.sampled_from(
        [("[", "", "]"), ('{"a":', "1", "}"), ("[", "1", "]"), ('{"value":', "1", "}")]
    ),
)
numbers = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.integers(1, 6000).map(lambda n: "9" * n),  # past int()'s 4300-digit limit too
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "-0", "1.5"]),
    st.floats().map(json.dumps),
)
strings = st.one_of(
    st.text(max_size=10).map(json.dumps),
    st.integers(0, 70_000).map(lambda n: json.dumps("a" * n)),
    st.sampled_from(['"\\ud800"', '"\\u0000"', '"\\udfff\\ud800"', '"int"', '"string"']),
)
leaves = st.one_of(
    deep, numbers, strings, st.sampled_from(["null", "true", "false", "[]", "{}", '""', "{"])
)
filled = st.builds(lambda t, v: t.replace("@", v).encode("utf-8", "surrogatepass"),
                   st.sampled_from(TEMPLATES), leaves)  # fmt: skip
payloads = st.one_of(
    filled,
    st.binary(max_size=64),  # not UTF-8, BOMs, UTF-16 guesses...
    st.builds(lambda p, b: p + b, filled, st.binary(min_size=1, max_size=4)),
)


def _loaded(payload: bytes) -> Any:
    """The payload as the twin reads a stored row back: JSON text."""
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):  # the loader's own refusal, before the decoder
        return None


@settings(max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(payloads)
def test_twin_decoders_raise_only_twin_errors(payload: bytes) -> None:
    for decode in (tw.parse_update, tw.parse_base, tw.parse_state):
        try:
            decode(payload)
        except TwinError as err:
            assert err.code == tw.BAD_REQUEST
    stored = _loaded(payload)
    try:
        tw.property_from_row(stored)
    except TwinError as err:
        assert err.code == tw.INTERNAL_ERROR
    try:
        tw.property_from_msg(stored if isinstance(stored, dict) else {"actual": stored})
    except TwinError as err:
        assert err.code == tw.BAD_REQUEST
