"""edgeproto.topics: both device topic forms KubeEdge has used."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from edgeproto import topics

labels = st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,20}[a-z0-9])?", fullmatch=True)


@given(labels, labels, st.sampled_from(topics.DEVICE_SUFFIXES))
def test_both_forms_round_trip(namespace: str, name: str, suffix: str) -> None:
    current = topics.device_topic(topics.device_id(namespace, name), suffix)
    assert current == f"$hw/events/device/{namespace}/{name}{suffix}"
    got = topics.parse_device_topic(current)
    assert got == (f"{namespace}/{name}", suffix)
    assert got is not None and got.namespace == namespace and got.name == name
    legacy = topics.parse_device_topic(topics.device_topic(name, suffix))
    assert legacy == (name, suffix) and legacy.namespace is None and legacy.name == name


@pytest.mark.parametrize(
    ("topic", "want"),
    [
        # A device or namespace named like a topic word is still split at the suffix.
        ("$hw/events/device/twin/twin/update", ("twin", "/twin/update")),
        ("$hw/events/device/ns/state/state/update", ("ns/state", "/state/update")),
        ("$hw/events/device/update/twin/update/result", ("update", "/twin/update/result")),
        ("$hw/events/device//twin/update/result", None),  # edgecore's unaddressed answers
        ("$hw/events/device/a/b/c/twin/update", None),
        ("$hw/events/device/a//twin/update", None),
        ("$hw/events/device/a/twin/nothing", None),
        ("$hw/events/node/a/membership/get", None),
    ],
)
def test_parse_device_topic(topic: str, want: tuple[str, str] | None) -> None:
    assert topics.parse_device_topic(topic) == want


@given(labels, labels, st.sampled_from(topics.DEVICE_SUFFIXES))
def test_a_topic_matches_at_most_one_subscription(ns: str, name: str, suffix: str) -> None:
    """The EventBus routes by subscription: the two forms never overlap, so no
    request is handled twice."""
    for device in (topics.device_id(ns, name), name):
        topic = topics.device_topic(device, suffix)
        assert sum(topic_matches_sub(s, topic) for s in topics.SUBSCRIPTIONS) <= 1


def test_edgecore_117_subscriptions_are_served() -> None:
    # edgecore 1.17+ subscribes $hw/events/device/+/+/twin/+ and .../+/+/state/update.
    for suffix in (topics.TWIN_UPDATE, topics.TWIN_GET, topics.STATE_UPDATE):
        topic = topics.device_topic("default/t", suffix)
        assert [s for s in topics.SUBSCRIPTIONS if topic_matches_sub(s, topic)]
