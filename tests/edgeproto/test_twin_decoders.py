"""Every decoder of ``edgeproto.twin`` raises only :class:`TwinError` (edgeproto's
declared error for twin requests), whatever the input: deep nesting, huge
numbers, NaN and infinities, long strings, bytes that are not UTF-8.

20,000 examples, each fed to every decoder. An example is a hostile JSON value
(``LEAVES``) put in one field of a request or stored row (``TEMPLATES``),
maybe followed by bytes that are not UTF-8, or raw bytes: a few integer draws,
so that Hypothesis spends its time on examples, not on generating them."""

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

# A hostile JSON value of size ``n``, one kind per entry.
LEAVES = [
    lambda n: "[" * n + "]" * n,  # deep: past the parser's recursion limit too
    lambda n: '{"a":' * n + "1" + "}" * n,
    lambda n: "[" * n + '"x"' + "]" * n,
    lambda n: "9" * (n % 6000 + 1),  # huge: past int()'s 4300-digit limit too
    lambda n: "-" + "9" * (n % 6000 + 1),
    lambda n: f"{n}.{n}e{n % 700}",  # finite, or inf once parsed
    lambda n: json.dumps("a" * 2 * n),  # long: past the 64 KiB message limit too
    lambda n: json.dumps(chr(n % 0x110000), ensure_ascii=False),  # any code point
    lambda n: json.dumps(chr(n % 0x110000)),  # as a \\u escape, lone surrogates too
    lambda n: str(n),
    lambda n: str(-n),
    *(
        (lambda n, v=v: v)
        for v in ["NaN", "Infinity", "-Infinity", "1e999", "-0", "1.5", "null", "true",
                  "false", "[]", "{}", '""', "{", '"int"', '"string"', '"\\u0000"']
    ),
]  # fmt: skip
TAILS = [b"", b"\xff", b"\x00", b"\xed\xa0\x80", b"\xc3"]  # not UTF-8 after the JSON


def build(seed: int) -> bytes:
    """The example ``seed`` stands for: a template, a leaf, its size (small or
    large) and a tail; or, one time in eight, the seed's own bytes (not UTF-8,
    BOMs, UTF-16 guesses)."""
    if seed % 8 == 7:
        return (seed >> 3).to_bytes(16, "little").rstrip(b"\0")
    seed, template = divmod(seed >> 3, len(TEMPLATES))
    seed, leaf = divmod(seed, len(LEAVES))
    seed, tail = divmod(seed, len(TAILS))
    seed, big = divmod(seed, 2)
    text = TEMPLATES[template].replace("@", LEAVES[leaf](seed % (40_000 if big else 64)))
    return text.encode("utf-8", "surrogatepass") + TAILS[tail]


# One integer draw per example: Hypothesis's cost per example is then close to
# its floor, and shrinking the integer shrinks the example.
payloads = st.integers(0, 2**128).map(build)


def _loaded(payload: bytes) -> Any:
    """The payload as the twin reads a stored row back: JSON text."""
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):  # the loader's own refusal, before the decoder
        return None


@settings(max_examples=5_000, deadline=None, suppress_health_check=list(HealthCheck))
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
