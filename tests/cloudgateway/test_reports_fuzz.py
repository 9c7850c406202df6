"""The whole report path fuzzed against a live hub (defect 11).

A real gateway (in this process, TLS on loopback) and a node holding a real
certificate; Hypothesis builds structured CBOR messages (every kind, op and
object, deep and huge values, valid reports with fields replaced by junk) and
sends them over the node's own WebSocket. Every report must get its answer,
nothing may fail inside the gateway, and afterwards it must still serve.

Hypothesis drives the examples from a worker thread; each example runs on the
test's trio loop (``trio.from_thread.run``), where the gateway lives.
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import Any

import cbor2
import trio
import trio_websocket as tws
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgeproto
from cloudgateway._reports import ReportLimits
from edgeagent._hub import open_hub_connection
from edgeagent._tls import client_ssl_context
from edgeproto import Kind, Message
from tests.cloudgateway.test_hub import connect, hub_url, recv, send
from tests.conftest import Gateway, join_node
from tests.test_sync_e2e import create, pod

API_DEVICES = "/apis/devices.kubeedge.io/v1beta1/namespaces/default/devices"
KEYS = [
    "nodes//node-a",
    "nodes//node-b",
    "devices/default/d-a",
    "devices/default/d-b",
    "devices/default/missing",
    "pods/default/p-a",
    "configmaps/default/x",
    "events/default/e",
]
OPS = ["status", "desired", "twin-history", "event", "stats"]


def _deep(depth: int) -> Any:
    v: Any = "bottom"
    for i in range(depth):
        v = [v] if i % 2 else {"k": v}
    return v


# Any value CBOR carries that a peer might send: JSON's, and what JSON has not.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["\u00b2", "\u0663", "12", "", "\x00", "Ready", "True", "Running"]),
    st.binary(max_size=8),
)
junk = st.one_of(
    st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=4),
        ),
        max_leaves=12,
    ),
    st.integers(min_value=1, max_value=450).map(_deep),  # past every depth limit
    st.integers(min_value=0, max_value=200_000).map(lambda n: "x" * n),  # huge
    st.integers(min_value=0, max_value=2000).map(lambda n: [{"propertyName": "t"}] * n),
)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the valid value, sometimes junk in its place."""
    return st.one_of(valid, valid, valid, junk)


timestamps = st.one_of(
    st.integers(min_value=0, max_value=2_000_000_000_000),
    st.sampled_from([10**30, 2**63, -1, 253_402_300_800_000]),
)
ts_strings = st.one_of(timestamps.map(str), st.sampled_from(["\u00b2", "1e3", " 1", "0x1"]))
conditions = st.lists(
    st.fixed_dictionaries(
        {"type": maybe(st.sampled_from(["Ready", "DiskPressure"]))},
        optional={"status": maybe(st.just("False"))},
    ),
    max_size=3,
)
twins = st.lists(
    st.fixed_dictionaries(
        {"propertyName": maybe(st.sampled_from(["temperature", "t"]))},
        optional={
            "reported": maybe(
                st.fixed_dictionaries(
                    {"value": maybe(st.text(max_size=5))},
                    optional={"metadata": maybe(st.just({"timestamp": "1"}))},
                )
            ),
            "observedDesired": maybe(st.fixed_dictionaries({"value": maybe(st.just("1"))})),
        },
    ),
    max_size=3,
)
statuses = st.fixed_dictionaries(
    {},
    optional={
        "conditions": maybe(conditions),
        "capacity": maybe(st.just({"cpu": "4", "memory": "1Gi"})),
        "nodeInfo": maybe(st.just({"architecture": "arm64"})),
        "addresses": maybe(st.just([{"type": "InternalIP", "address": "10.0.0.2"}])),
        "phase": maybe(st.sampled_from(["Running", "Pending"])),
        "containerStatuses": maybe(st.just([{"name": "c", "ready": True}])),
        "twins": maybe(twins),
        "state": maybe(st.just("online")),
        "twinHistory": maybe(st.just({"t": []})),
    },
)
usages = st.fixed_dictionaries(
    {"cpu": maybe(st.integers(0, 10**12)), "rate": maybe(st.integers(0, 10**10)), "mem": junk}
)
stats = st.fixed_dictionaries(
    {"time": maybe(st.integers(0, 2 * 10**12)), "window": maybe(st.integers(1, 60_000))},
    optional={
        "node": maybe(usages),
        "pods": maybe(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "ns": maybe(st.just("default")),
                        "name": maybe(st.sampled_from(["p-a", "p/x"])),
                        "containers": maybe(
                            st.lists(usages.map(lambda u: {"name": "c", **u}), max_size=2)
                        ),
                    }
                ),
                max_size=3,
            )
        ),
    },
)
bodies = st.one_of(
    st.fixed_dictionaries({"status": maybe(statuses)}),
    st.fixed_dictionaries(
        {
            "desired": maybe(
                st.dictionaries(
                    st.sampled_from(["temperature", "nope"]), maybe(st.text(max_size=5)), max_size=2
                )
            )
        }
    ),
    st.fixed_dictionaries(
        {
            "history": maybe(
                st.lists(
                    st.fixed_dictionaries(
                        {
                            "propertyName": maybe(st.just("temperature")),
                            "value": maybe(st.text(max_size=5)),
                            "timestamp": maybe(ts_strings),
                        }
                    ),
                    min_size=1,
                    max_size=4,
                )
            )
        }
    ),
    st.fixed_dictionaries(
        {"topic": maybe(st.just("door")), "payload": junk, "timestamp": maybe(timestamps)}
    ),
    st.fixed_dictionaries({"stats": maybe(stats)}),
    st.dictionaries(st.text(max_size=8), junk, max_size=3),
)
reports = st.tuples(
    maybe(st.sampled_from(OPS)),  # op: junk too (then it goes as a raw frame)
    st.one_of(st.sampled_from(KEYS), st.text(max_size=30)),
    bodies,
)
# Frames besides reports: other kinds, broken envelopes, not CBOR at all.
other_frames = st.one_of(
    st.builds(
        lambda kind, body: cbor2.dumps({"v": 1, "id": 3, "kind": kind, "body": body}),
        st.sampled_from(["ack", "error", "stream-data", "stream-end", "request", "hello", "x"]),
        st.dictionaries(st.text(max_size=5), scalars, max_size=3),
    ),
    st.builds(
        lambda m: cbor2.dumps(m),
        st.dictionaries(
            st.sampled_from(["v", "id", "kind", "body", "res", "op", "parent"]), scalars, max_size=6
        ),
    ),
    st.binary(max_size=40),
)
examples = st.lists(st.one_of(reports, reports, reports, other_frames), min_size=1, max_size=6)


class Node:
    """node-a's connection, owned by one task (``serve``) that runs the examples
    handed to it (``run_example``, from any task) and reconnects whenever a
    frame made the gateway close it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ids = itertools.count(1000)
        self.answered = 0
        self.connections = 0
        self._tx, self._rx = trio.open_memory_channel[tuple[list[Any], list[str], trio.Event]](0)

    async def run_example(self, frames: list[Any]) -> None:
        problems: list[str] = []
        done = trio.Event()
        await self._tx.send((frames, problems, done))
        await done.wait()
        assert not problems, problems

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            # Generous timeouts: the machine running the suite may be loaded.
            async with open_hub_connection(
                hub_url(self.data_dir),
                client_ssl_context(self.data_dir),
                connect_timeout=60,
                max_message=edgeproto.DEFAULT_MAX_MESSAGE * 2,
            ) as ws:
                self.connections += 1
                await send(ws, Message(Kind.HELLO, body={"node": "node-a", "last_rev": 0}))
                with trio.fail_after(60):
                    first = edgeproto.decode_message(await ws.get_message())
                assert first.kind is Kind.SNAPSHOT, first
                open_ = True
                while open_:
                    frames, problems, done = await self._rx.receive()
                    try:
                        open_ = await self._example(ws, frames, problems)
                    finally:
                        done.set()

    async def _example(
        self, ws: tws.WebSocketConnection, frames: list[Any], problems: list[str]
    ) -> bool:
        """Send ``frames``; False if the gateway closed the connection."""
        waiting: set[int] = set()
        try:
            for f in frames:
                if isinstance(f, bytes):
                    await ws.send_message(f)
                    continue
                op, res, body = f
                seq = next(self.ids)
                msg = Message(
                    Kind.REPORT, id=seq, res=res, op=op if isinstance(op, str) else None, body=body
                )
                try:
                    data = edgeproto.encode_message(msg)
                except edgeproto.ProtocolError:  # too large or not encodable: send it raw
                    with contextlib.suppress(Exception):
                        raw = {
                            "v": 1,
                            "id": seq,
                            "kind": "report",
                            "res": res,
                            "op": op,
                            "body": body,
                        }
                        await ws.send_message(cbor2.dumps(raw))
                    continue
                await ws.send_message(data)
                waiting.add(seq)
            marker = next(self.ids)
            await send(ws, Message(Kind.PING, id=marker))
            with trio.fail_after(60):
                while True:
                    got = edgeproto.decode_message(await ws.get_message())
                    if got.kind is Kind.ACK and got.parent in waiting:
                        waiting.discard(got.parent)
                        self.answered += 1
                    elif got.kind is Kind.PONG and got.parent == marker:
                        break
        except tws.ConnectionClosed:
            return False
        if waiting:
            problems.append(f"reports never answered: {sorted(waiting)}")
        return True


async def test_fuzzed_reports_against_a_live_hub(gateway: Gateway, tmp_path: Path) -> None:
    """Defect 11: 8 of 4,000 random mutations of a node's own reports took the
    gateway down."""
    a, b = tmp_path / "a", tmp_path / "b"
    await join_node(gateway, "node-a", a)
    await join_node(gateway, "node-b", b)
    for name, node in (("d-a", "node-a"), ("d-b", "node-b")):
        code, body = await gateway.api(
            "POST",
            API_DEVICES,
            {
                "apiVersion": "devices.kubeedge.io/v1beta1",
                "kind": "Device",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {
                    "deviceModelRef": {"name": "m"},
                    "nodeName": node,
                    "properties": [{"name": "temperature"}],
                },
            },
        )
        assert code == 201, body
    await create(gateway, "pods", pod("p-a", "node-a", "cm", "secret"))
    # Rates out of the way: a throttled report is answered before it is looked
    # at, and the point here is to look at every one (quotas: test_reports.py).
    hub = gateway.running.hub
    hub._reports.limits = ReportLimits(rate=1e9, burst=10**9, event_rate=1e9, event_burst=10**9)
    node = Node(a)
    token = trio.lowlevel.current_trio_token()

    # ~300 examples of up to 6 frames each take about a minute on a loaded
    # 2-core machine: each report is a store write, one at a time per connection.
    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
        database=None,
    )
    @given(examples)
    def fuzz(frames: list[Any]) -> None:
        trio.from_thread.run(node.run_example, frames, trio_token=token)

    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        await trio.to_thread.run_sync(fuzz)
        nursery.cancel_scope.cancel()
    stats = hub.statistics()
    assert stats.get("reports_internal_error", 0) == 0, stats
    assert stats.get("connections_failed", 0) == 0, stats
    assert node.answered > 100, (node.answered, stats)
    # Still serving: the API answers; another node connects and syncs.
    code, _ = await gateway.api("GET", "/api/v1/nodes")
    assert code == 200
    async with connect(b) as ws:
        await send(ws, Message(Kind.HELLO, body={"node": "node-b", "last_rev": 0}))
        assert (await recv(ws)).kind is Kind.SNAPSHOT
