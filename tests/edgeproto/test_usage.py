"""The ``stats`` report body (edgeproto.usage): what the agent builds the
gateway reads back, and anything else is a ``UsageError`` naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproto.usage import (
    MAX_PODS,
    ContainerUsage,
    NodeUsage,
    PodUsage,
    Usage,
    UsageError,
    parse_stats,
    stats_body,
)

SAMPLE = NodeUsage(
    time_ms=1_718_000_000_123,
    window_ms=30_000,
    node=Usage(cpu=8_000_000_000, rate=250_000_000, memory=1 << 30),
    pods=(
        PodUsage("default", "web", (ContainerUsage("main", Usage(5, 6, 7)),)),
        PodUsage("kube-system", "web", (ContainerUsage("a", Usage(0, 0, 0)),)),
    ),
)


def body() -> dict[str, Any]:
    return stats_body(SAMPLE)


def test_round_trip() -> None:
    assert parse_stats(body()) == SAMPLE
    assert parse_stats({**body(), "pods": []}).pods == ()


def _set(path: list[Any], value: Any) -> dict[str, Any]:
    b = body()
    target: Any = b
    for p in path[:-1]:
        target = target[p]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return b


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["time"], "1718000000", "stats.time must be an integer"),
        (["time"], -1, "stats.time must be an integer"),
        (["window"], 0, "stats.window must be an integer in 1.."),
        (["window"], True, "stats.window must be an integer"),
        (["node"], _DELETE, "stats: missing ['node']"),
        (["extra"], 1, "stats: unknown fields ['extra']"),
        (["node", "cpu"], 1.5, "stats.node.cpu must be an integer"),
        (["node", "mem"], 1 << 64, "stats.node.mem must be an integer"),
        (["node", "rate"], -5, "stats.node.rate must be an integer"),
        (["pods"], {}, "stats.pods must be a list"),
        (["pods", 0, "ns"], "", "stats.pods[0].ns must be a string of 1.."),
        (["pods", 0, "name"], "a/b", "stats.pods[0].name 'a/b' is not a name"),
        (["pods", 0, "containers"], [], "stats.pods[0].containers must be a list of 1.."),
        (["pods", 0, "containers", 0, "mem"], None, "stats.pods[0].containers[0].mem must be"),
        (["pods", 1, "ns"], "default", "stats.pods[1]: pod default/web twice"),
    ],
)
def test_malformed_bodies_name_the_field(path: list[Any], value: Any, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_stats(_set(path, value))
    assert message in str(info.value)
    assert info.value.code == "bad-field"


def test_limits() -> None:
    pod = body()["pods"][0]
    many = [{**pod, "name": f"p{i}"} for i in range(MAX_PODS + 1)]
    with pytest.raises(UsageError, match="at most 1000 pods"):
        parse_stats({**body(), "pods": many})
    twice = {**pod, "containers": pod["containers"] * 2}
    with pytest.raises(UsageError, match="container 'main' twice"):
        parse_stats({**body(), "pods": [twice]})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(json_values, st.fixed_dictionaries({}, optional=dict.fromkeys(body(), json_values)))
)
def test_anything_else_raises_only_usage_error(value: Any) -> None:
    try:
        parse_stats(value)
    except UsageError:
        pass
