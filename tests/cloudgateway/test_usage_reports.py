"""``stats`` reports (resource usage for ``top``) at the gateway: a good one
replaces the node's cached usage, a malformed one is refused with a final 400
naming the field and changes nothing, another node's is refused 403."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import edgeproto
from cloudgateway._reports import Reports
from cloudgateway._store import SqliteBackend, Store
from cloudgateway._usage import UsageCache
from edgeproto import Kind, Message
from edgeproto.usage import ContainerUsage, NodeUsage, PodUsage, Usage, stats_body

KEY = "nodes//node-a"


def sample(rate: int) -> NodeUsage:
    pod = PodUsage("default", "web", (ContainerUsage("main", Usage(10, rate, 4096)),))
    return NodeUsage(1_718_000_000_000, 10_000, Usage(100, rate, 1 << 20), (pod,))


def stats(body: Any, key: str = KEY, seq: int = 1) -> Message:
    return Message(Kind.REPORT, id=seq, res=key, op="stats", body={"stats": body})


async def test_stats_reports_are_checked_and_the_latest_kept(tmp_path: Path) -> None:
    backend = SqliteBackend(str(tmp_path / "store.db"), node_of=edgeproto.owner_node)
    try:
        counters: Counter[str] = Counter()
        usage = UsageCache()
        reports = Reports(Store(backend), counters, usage=usage)
        assert await reports.handle("node-a", stats(stats_body(sample(5)))) == {}
        assert await reports.handle("node-a", stats(stats_body(sample(7)), seq=2)) == {}
        assert usage.get("node-a") == sample(7) and len(usage) == 1  # replaced, not added

        bad = stats_body(sample(9))
        bad["pods"][0]["containers"][0]["rate"] = "9"
        answer = await reports.handle("node-a", stats(bad, seq=3))
        assert answer == {
            "error": {
                "code": 400,
                "message": "stats.pods[0].containers[0].rate must be an integer in "
                "0..18446744073709551615",
            }
        }
        for junk in (None, [], {"time": 1}, "x"):
            answer = await reports.handle("node-a", stats(junk, seq=4))
            assert answer["error"]["code"] == 400, (junk, answer)
        assert usage.get("node-a") == sample(7)  # nothing of the bad ones landed
        assert counters["reports_malformed"] == 5 and counters["stats_reports"] == 2

        answer = await reports.handle("node-a", stats(stats_body(sample(1)), key="nodes//node-b"))
        assert answer["error"]["code"] == 403
        answer = await reports.handle(
            "node-a", stats(stats_body(sample(1)), key="pods/default/web")
        )
        assert answer["error"] == {"code": 400, "message": "a stats report is not about pods"}
        assert usage.get("node-b") is None
    finally:
        backend.close()


def test_usage_cache_forgets_silent_nodes() -> None:
    now = [0.0]
    cache = UsageCache(clock=lambda: now[0])
    cache.put("a", sample(1))  # window 10 s: stale after max(120 s, 5 windows)
    now[0] = 119.0
    assert cache.get("a") == sample(1) and [n for n, _ in cache.items()] == ["a"]
    now[0] = 121.0
    assert cache.get("a") is None and cache.items() == [] and len(cache) == 0
