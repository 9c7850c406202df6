"""edgeproto.twin: the sans-io twin document core (parse, merge, payloads)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproto import twin as tw
from edgeproto.twin import TwinError, TwinProperty, TwinValue, Version

KEY_CHARS = "abcXYZ019-_.,:/@#"
keys = st.text(KEY_CHARS, min_size=1, max_size=128)
values = st.text(KEY_CHARS, min_size=1, max_size=40)


def upd(twin: dict[str, Any], event_id: str = "ev") -> tw.TwinUpdate:
    return tw.parse_update(
        json.dumps({"event_id": event_id, "timestamp": 1, "twin": twin}).encode()
    )


def actual(v: str, typ: str = "string", **extra: Any) -> dict[str, Any]:
    return {
        "actual": {"value": v, "metadata": {"timestamp": 7}},
        "metadata": {"type": typ},
        **extra,
    }


def test_update_result_delta_document() -> None:
    cur = tw.apply_desired({}, {"setpoint": ("25", "int"), "temp": (None, "int")}, 100).twins
    assert cur["setpoint"].expected == TwinValue("25", 100)
    assert cur["setpoint"].expected_version == Version(1, 0)
    assert cur["temp"].expected is None
    assert tw.delta(cur) == {"setpoint": "25"}

    m = tw.merge_update(
        cur, upd({"temp": actual("21", "int"), "setpoint": actual("25", "int")}), 200
    )
    assert m.actual_changed == {"temp", "setpoint"} and not m.expected_changed
    # The edge's clock (200), not the mapper's timestamp (7): edgecore stamps ``now``.
    assert m.twins["temp"].actual == TwinValue("21", 200)
    assert m.twins["temp"].actual_version == Version(0, 1)
    assert tw.delta(m.twins) == {}
    assert tw.delta_message("e", 1, m.twins) is None
    res = tw.twin_message("ev", 5, m.result)
    assert res["event_id"] == "ev" and res["timestamp"] == 5
    assert res["twin"]["temp"] == {
        "actual": {"value": "21", "metadata": {"timestamp": 200}},
        "optional": True,
        "metadata": {"type": "int"},
    }
    doc = tw.document_message("ev", 5, m.document)
    assert doc["twin"]["temp"]["last"]["metadata"] == {"type": "int"}
    assert doc["twin"]["temp"]["current"]["actual"]["value"] == "21"

    # The same value again changes nothing stored, but is listed in the result
    # (edgecore lists every property given a value).
    again = tw.merge_update(m.twins, upd({"temp": actual("21", "int")}), 300)
    assert not again.changed and again.twins == m.twins
    assert again.given == {"temp"} and again.answer() == {"temp": m.twins["temp"]}

    # A desired value set at the edge bumps the edge version of expected.
    e = tw.merge_update(m.twins, upd({"setpoint": {"expected": {"value": "30"}}}), 400)
    assert e.expected_changed == {"setpoint"}
    assert e.twins["setpoint"].expected_version == Version(1, 1)
    d = tw.delta_message("x", 1, e.twins)
    assert d is not None and d["delta"] == {"setpoint": "30"}
    assert "expected_version" not in d["twin"]["setpoint"]


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", 400),
        (b"[]", 400),
        (b'{"event_id": "a"}', 400),
        (b'{"twin": 3}', 400),
        (b'{"event_id": 5, "twin": {}}', 400),
        (json.dumps({"twin": {"k" * 129: actual("1")}}).encode(), 400),
        (json.dumps({"twin": {"bad key": actual("1")}}).encode(), 400),
        (json.dumps({"twin": {"k": actual("v" * 513)}}).encode(), 400),
        (json.dumps({"twin": {"k": actual("has space")}}).encode(), 400),
        (json.dumps({"twin": {"k": {"actual": {"value": 5}}}}).encode(), 400),
        (json.dumps({"twin": {"k": actual("1", "color")}}).encode(), 400),
        (json.dumps({"twin": {f"k{i}": actual("1") for i in range(300)}}).encode(), 400),
        (b" " * (tw.MAX_PAYLOAD + 1), 400),
    ],
)
def test_bad_requests(payload: bytes, code: int) -> None:
    with pytest.raises(TwinError) as info:
        tw.parse_update(payload)
    assert info.value.code == code


def test_event_id_is_kept_in_errors() -> None:
    with pytest.raises(TwinError) as info:
        tw.parse_update(json.dumps({"event_id": "E9", "twin": {"k": actual("a b")}}).encode())
    assert info.value.event_id == "E9"
    msg = tw.error_message("E9", 3, info.value.code, info.value.reason)
    assert msg == {"event_id": "E9", "timestamp": 3, "code": 400, "reason": tw.ERR_VALUE}


@pytest.mark.parametrize(
    ("typ", "value", "ok"),
    [
        ("int", "12", True),
        ("int", "1.5", False),
        ("integer", "-3", True),
        ("float", "1.5", True),
        ("double", "x", False),
        ("boolean", "true", True),
        ("boolean", "yes", False),
        ("string", "anything", True),
        ("bytes", "abc", True),
        ("stream", "abc", True),
    ],
)
def test_value_types(typ: str, value: str, ok: bool) -> None:
    u = upd({"p": actual(value, typ)})
    if ok:
        assert tw.merge_update({}, u, 1).twins["p"].actual == TwinValue(value, 1)
    else:
        with pytest.raises(TwinError) as info:
            tw.merge_update({}, u, 1)
        assert info.value.code == 400


def test_stale_version_is_a_conflict_and_changes_nothing() -> None:
    cur = tw.merge_update({}, upd({"p": actual("1")}), 1).twins
    cur = tw.merge_update(cur, upd({"p": actual("2")}), 2).twins
    assert cur["p"].actual_version == Version(0, 2)
    stale = upd({"q": actual("9"), "p": actual("3", actual_version={"cloud": 0, "edge": 1})}, "st")
    with pytest.raises(TwinError) as info:
        tw.merge_update(cur, stale, 3)
    assert info.value.code == tw.CONFLICT and info.value.event_id == "st"
    fresh = upd({"p": actual("3", actual_version={"cloud": 0, "edge": 2})})
    assert tw.merge_update(cur, fresh, 3).twins["p"].actual_version == Version(0, 3)


def test_delete_optional_only() -> None:
    cur = tw.merge_update({}, upd({"p": actual("1"), "q": actual("2", optional=False)}), 1).twins
    m = tw.merge_update(cur, upd({"p": None}), 2)
    assert "p" not in m.twins and m.deleted == {"p"} and m.document["p"][1] is None
    for bad in ({"q": None}, {"nope": None}):
        with pytest.raises(TwinError):
            tw.merge_update(cur, upd(bad), 2)


def test_state_and_base() -> None:
    assert tw.parse_state(b'{"event_id": "s", "state": "online"}') == ("s", "online")
    assert tw.parse_base(b'{"event_id": "g", "timestamp": 9}') == ("g", 9)
    for bad in (b'{"state": 1}', b'{"state": "on line"}', b"nope", b'{"timestamp": -1}'):
        with pytest.raises(TwinError):
            tw.parse_state(bad) if b"state" in bad else tw.parse_base(bad)


@given(st.binary(max_size=300))
def test_parse_never_fails_otherwise(data: bytes) -> None:
    for fn in (tw.parse_update, tw.parse_base, tw.parse_state):
        try:
            fn(data)
        except TwinError as err:
            assert err.code == 400


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(keys | st.text(max_size=5), json_values, max_size=4))
def test_parse_any_json_twin(twin: dict[str, Any]) -> None:
    try:
        u = upd(twin)
    except TwinError as err:
        assert err.code == 400
        return
    try:
        tw.merge_update({}, u, 1)
    except TwinError as err:
        assert err.code == 400


props = st.builds(
    TwinProperty,
    expected=st.none() | st.builds(TwinValue, values, st.integers(0, 2**40)),
    actual=st.none() | st.builds(TwinValue, values, st.integers(0, 2**40)),
    type=st.sampled_from(["string", "int", "float", "boolean", "bytes"]),
    optional=st.booleans(),
    expected_version=st.none() | st.builds(Version, st.integers(0, 99), st.integers(0, 99)),
    actual_version=st.none() | st.builds(Version, st.integers(0, 99), st.integers(0, 99)),
)


@given(props)
def test_stored_form_round_trips(p: TwinProperty) -> None:
    assert tw.property_from_msg(json.loads(json.dumps(p.to_msg(versions=True)))) == p


@given(props)
def test_compact_row_round_trips_and_is_smaller(p: TwinProperty) -> None:
    row = json.dumps(p.to_row(), separators=(",", ":"))
    assert tw.property_from_row(json.loads(row)) == p
    assert len(row) < len(json.dumps(p.to_msg(versions=True), separators=(",", ":"))) + 8


@given(st.lists(json_values, max_size=9) | json_values)
def test_a_bad_row_is_a_twin_error(row: Any) -> None:
    try:
        tw.property_from_row(row)
    except TwinError as err:
        assert err.code == tw.INTERNAL_ERROR


@given(st.dictionaries(keys, props, max_size=4), st.dictionaries(keys, values, max_size=4))
def test_merge_is_atomic_and_versions_grow(
    cur: dict[str, TwinProperty], new: dict[str, str]
) -> None:
    u = upd({k: {"actual": {"value": v}} for k, v in new.items()})
    try:
        m = tw.merge_update(cur, u, 5)
    except TwinError as err:
        assert err.code == 400  # a value that does not fit the stored type
        return
    for k, v in new.items():
        p = m.twins[k]
        assert p.actual is not None and p.actual.value == v
        before = cur.get(k)
        if k in m.actual_changed:
            old = (before.actual_version if before else None) or Version()
            assert p.actual_version == Version(old.cloud, old.edge + 1)
        else:
            assert before is not None and before.actual is not None and before.actual.value == v
    assert set(m.twins) == set(cur) | set(new)


def test_unreadable_base_requests_get_edgecores_words() -> None:
    with pytest.raises(TwinError) as info:
        tw.parse_base(b"{nope")
    assert info.value.code == 400 and info.value.event_id == ""
    assert info.value.reason.startswith("Unmarshal twin info {nope failed , err: Expecting")
    with pytest.raises(TwinError) as info:
        tw.parse_base(b'{"event_id": 3}', "get membership info")
    assert info.value.reason.startswith('Unmarshal get membership info {"event_id": 3} failed')


def test_edgecore_reasons_for_types_and_unknown_deletes() -> None:
    with pytest.raises(TwinError) as info:
        tw.parse_update(json.dumps({"twin": {"k": actual("1", "color")}}).encode())
    assert info.value.reason == "the value type is not allowed"
    with pytest.raises(TwinError) as info:
        tw.merge_update({}, upd({"k": None}), 1)
    assert info.value.reason == "the request body is wrong"


def test_state_result_carries_last_online_time() -> None:
    msg = tw.state_message("e", 1, "d1", "online", "2026-01-01T00:00:00Z")
    assert msg["device"]["lastOnlineTime"] == "2026-01-01T00:00:00Z"
    assert "lastOnlineTime" not in tw.state_message("e", 1, "d1", "offline", "")["device"]
