"""The agent's choice of hub among the gateway replicas, and its waits.

``Failover`` is driven directly with a seeded rng (the waits are checked
there); the hub client's loop is run under trio's autojump clock against real
closed ports (refused at once), so minutes of backoff take no time. (Virtual
time is not measured there: it also runs while the store's worker thread
writes.)"""

from __future__ import annotations

import json
import random
import socket
import time
from collections import Counter
from pathlib import Path

import trio

from cloudgateway._pki import load_or_create_pki
from edgeagent._cli import agent_status
from edgeagent._config import load_config
from edgeagent._failover import Failover
from edgeagent._hub import HubClient
from edgeagent._meta import Meta
from edgeagent._tls import client_ssl_context
from tests.conftest import wait_for, write_node_credentials

A, B, C = "wss://a.example:10000/", "wss://b.example:10000/", "wss://c.example:10000/"


def failover(hubs: list[str], current: str | None = None, seed: int = 1) -> Failover:
    return Failover(hubs, current, base=1.0, cap=60.0, rng=random.Random(seed))


def test_starts_on_the_hub_in_use_or_the_first() -> None:
    assert failover([A, B], B).current == B
    assert failover([A, B]).current == A
    assert failover([A, B], C).current == A  # the one in use left the list meanwhile


def test_stays_on_a_hub_that_works() -> None:
    f = failover([A, B, C])
    for _ in range(20):
        f.ended(worked=True, hub_failed=False)  # ended by the agent (its store)
        assert f.current == A


def test_a_failure_moves_to_another_hub_every_time() -> None:
    f = failover([A, B, C])
    seen = []
    for _ in range(30):
        before = f.current
        f.ended(worked=False, hub_failed=True)
        assert f.current != before
        seen.append(f.current)
    assert set(seen) == {A, B, C}


def test_the_boards_of_a_dead_replica_spread_over_the_survivors() -> None:
    moved_to: Counter[str] = Counter()
    for seed in range(300):
        f = failover([A, B, C], A, seed=seed)
        f.ended(worked=True, hub_failed=True)  # A died under a working session
        moved_to[f.current] += 1
    assert moved_to[A] == 0
    assert moved_to[B] > 100 and moved_to[C] > 100, moved_to


def test_a_list_without_the_current_hub_moves_the_board_at_its_next_reconnect() -> None:
    f = failover([A, B], A)
    assert f.update([B, C]) is True
    assert f.current == A  # the working session is not dropped for it
    f.ended(worked=True, hub_failed=False)  # even an end that is not the hub's fault
    assert f.current in (B, C)
    assert f.update([B, C]) is False


def test_a_single_hub_is_retried_as_before() -> None:
    f = failover([A])
    for _ in range(10):
        f.ended(worked=False, hub_failed=True)
        assert f.current == A


def test_waits_are_full_jitter_growing_with_failures_in_a_row() -> None:
    f = failover([A, B], seed=7)
    delays = [f.ended(worked=False, hub_failed=True) for _ in range(12)]
    for i, d in enumerate(delays):
        assert 0.0 <= d < min(60.0, 2.0**i), (i, d)
    assert max(delays[6:]) > 8.0  # it does grow (seeded: deterministic)
    # the first reconnect after a session that worked: jittered within the base
    after_drop = [failover([A, B], seed=s).ended(worked=True, hub_failed=True) for s in range(50)]
    assert all(0.0 <= d < 1.0 for d in after_drop)
    assert len({round(d, 3) for d in after_drop}) > 40  # spread, not all at once
    assert f.ended(worked=True, hub_failed=True) < 1.0  # a working session resets the count


def test_a_gateway_asking_to_come_back_later_is_waited_for_on_another_hub() -> None:
    f = failover([A, B], A)
    delay = f.ended(worked=False, hub_failed=True, retry_after=10.0)
    assert 10.0 <= delay <= 15.0
    assert f.current == B


def closed_port_url() -> str:
    """A loopback port nothing listens on (bound, then closed): refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"wss://127.0.0.1:{port}/"


def enroll(data_dir: Path, hubs: list[str]) -> None:
    write_node_credentials(load_or_create_pki(data_dir.parent / "gw"), "pi-f", data_dir)
    enrollment = {"node": "pi-f", "hub": hubs[0], "hubs": hubs}
    (data_dir / "enrollment.json").write_text(json.dumps(enrollment))


async def run_client_until(data_dir: Path, disconnects: int, **overrides: float) -> HubClient:
    """Run a hub client until it counted ``disconnects``."""
    config = load_config(data_dir, **overrides)
    meta = Meta(config.meta_path)
    try:
        hub = HubClient(config, meta, lambda: client_ssl_context(data_dir), rng=random.Random(3))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.run)
            await wait_for(lambda: hub.counters["disconnects"] >= disconnects, timeout=3600)
            nursery.cancel_scope.cancel()
        return hub
    finally:
        meta.close()


async def test_the_client_moves_on_each_refusal_with_growing_jittered_waits(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    hubs = [closed_port_url() for _ in range(3)]
    data = tmp_path / "agent"
    enroll(data, hubs)
    began = time.monotonic()
    hub = await run_client_until(data, 12, backoff_base=1.0, backoff_cap=30.0)
    assert time.monotonic() - began < 30.0  # minutes of backoff, in virtual time
    # every failed attempt moved it: there is always another hub to try
    assert hub.counters["hub_moves"] == hub.counters["disconnects"] == 12
    assert hub.failover.attempt == 12  # and each one made the next wait longer
    st = agent_status(data)
    assert st["gateway"] in hubs and st["gateway"] != hub.hub_url  # the last one tried
    assert st["hubs"] == hubs
    assert st["connected"] is False


async def test_a_single_hub_board_retries_its_one_hub(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    url = closed_port_url()
    data = tmp_path / "agent"
    enroll(data, [url])
    hub = await run_client_until(data, 5, backoff_base=1.0, backoff_cap=30.0)
    assert hub.counters["hub_moves"] == 0
    assert hub.hub_url == url
