"""The agent's usage reporter (``top``): node usage from this machine's real
/proc, one pending stats report per node however long the board is offline,
and ``stats_interval`` checked."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import pytest
import trio

from edgeagent._config import AgentConfig, ConfigError, load_config
from edgeagent._meta import Meta
from edgeagent._usage import UsageReporter, node_cpu_ns, node_working_set
from edgeproto.usage import parse_stats
from tests.conftest import wait_for


def test_node_usage_from_proc() -> None:
    cpu = node_cpu_ns(Path("/proc/stat").read_text())
    meminfo = Path("/proc/meminfo").read_text()
    total = int(meminfo.split("MemTotal:")[1].split()[0]) * 1024
    assert cpu > 0 and 0 < node_working_set(meminfo) < total
    stat = "cpu  100 5 50 1000 7 1 2 3 9 0\ncpu0 1 1 1 1 1 1 1 1\n"
    assert node_cpu_ns(stat) == (100 + 5 + 50 + 1 + 2 + 3) * node_cpu_ns("cpu 1 0 0 0 0 0 0 0")
    mem = "MemTotal: 1000 kB\nMemFree: 300 kB\nInactive(file): 200 kB\n"
    assert node_working_set(mem) == 500 * 1024
    with pytest.raises(ValueError):
        node_working_set("MemTotal: 1000 kB\n")


async def test_an_offline_board_holds_one_stats_report(tmp_path: Path) -> None:
    meta = Meta(tmp_path / "meta.db")
    config = AgentConfig(tmp_path, "pi-1", "wss://127.0.0.1:9/", stats_interval=0.02)
    reporter = UsageReporter(config, meta)
    try:
        async with trio.open_nursery() as nursery:  # no hub takes the reports
            await nursery.start(reporter.run)
            await wait_for(lambda: reporter.reports >= 10)
            nursery.cancel_scope.cancel()
        items = await meta.outbox_after(0, 100)
        assert [(i.key, i.op) for i in items] == [("nodes//pi-1#stats", "stats")]
        sample = parse_stats(cbor2.loads(items[0].body)["stats"])  # what the gateway reads
        assert sample.node.memory > 0 and sample.window_ms >= 1 and sample.pods == ()
    finally:
        meta.close()


def test_stats_interval_is_checked(tmp_path: Path) -> None:
    (tmp_path / "enrollment.json").write_text(json.dumps({"node": "pi", "hub": "wss://h:1/"}))
    assert load_config(tmp_path).stats_interval == 30.0
    (tmp_path / "agent.toml").write_text("stats_interval = 0\n")
    assert load_config(tmp_path).stats_interval == 0.0
    (tmp_path / "agent.toml").write_text("stats_interval = -1\n")
    with pytest.raises(ConfigError, match="stats_interval must be 0"):
        load_config(tmp_path)
