"""/metrics of a real agent and a real Modbus mapper (its own process, against
the pymodbus simulator, with JSON logs), and the device gauge they feed at the
gateway: names, TYPE lines, and values that move with the work done."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio

from tests.conftest import join_node, start_agent, start_gateway, wait_for
from tests.mappers.conftest import start_modbus_sim, stop
from tests.metrics_fixtures import free_port, sample, scrape
from tests.mqtt_fixtures import open_broker
from tests.test_modbus_e2e import API, thermometer

ROOT = Path(__file__).resolve().parent.parent


async def test_agent_and_mapper_metrics(nursery: trio.Nursery, tmp_path: Path) -> None:
    sim = start_modbus_sim("--tcp", "127.0.0.1:0", "--static")
    try:
        async with open_broker(tmp_path) as broker:
            gw = await start_gateway(nursery, tmp_path / "gw")
            await join_node(gw, "pi-modbus", tmp_path / "agent")
            agent_port = free_port()
            agent = await start_agent(
                nursery, tmp_path / "agent", mqtt=broker.url, metrics=f"127.0.0.1:{agent_port}"
            )
            mapper_port = free_port()
            log_path = tmp_path / "mapper.log"
            with log_path.open("wb") as log:
                mapper = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child
                    [sys.executable, "-m", "mappers.modbus", "--mqtt", broker.url,
                     "--node", "pi-modbus", "--metrics", f"127.0.0.1:{mapper_port}",
                     "--log-format", "json"],
                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                )  # fmt: skip
            try:
                for obj in thermometer(sim.port):
                    res = "devicemodels" if obj["kind"] == "DeviceModel" else "devices"
                    code, body = await gw.api("POST", f"{API}/{res}", obj)
                    assert code == 201, body

                async def gateway_gauge() -> float | None:
                    fams = await trio.to_thread.run_sync(scrape, gw.api_url + "/metrics", gw.token)
                    fam = fams.get("edgeflock_device_property")
                    for s in fam.samples if fam else ():
                        if s.labels["property"] == "temperature":
                            assert s.labels["node"] == "pi-modbus"
                            return float(s.value)
                    return None

                assert await wait_for(gateway_gauge, timeout=30, interval=0.2) == 21.5
                gw_fams = await trio.to_thread.run_sync(scrape, gw.api_url + "/metrics", gw.token)
                assert sample(gw_fams, "edgeflock_hub_reports_acked_total", op="status") >= 1
                assert sample(gw_fams, "edgeflock_hub_resync_duration_seconds_count") >= 1
                assert sample(gw_fams, "edgeflock_hub_sessions") == 1

                # The agent: connected, resynced, the twin and the bus at work.
                url = f"http://127.0.0.1:{agent_port}/metrics"
                fams = await trio.to_thread.run_sync(scrape, url)
                assert fams["edgeflock_agent_connected"].type == "gauge"
                assert sample(fams, "edgeflock_agent_connected") == 1
                assert fams["edgeflock_agent_last_resync_timestamp_seconds"].type == "gauge"
                assert fams["edgeflock_agent_outbox_dropped"].type == "counter"
                assert fams["edgeflock_agent_sqlite_written_bytes"].type == "counter"
                assert sample(fams, "edgeflock_agent_sqlite_written_bytes_total") > 0
                assert sample(fams, "edgeflock_agent_twin_updates_total") >= 1
                assert sample(fams, "edgeflock_agent_mqtt_messages_received_total") >= 1
                assert sample(fams, "edgeflock_agent_mqtt_messages_published_total") >= 1

                # The mapper: per-device reads moving, online, latency observed.
                murl = f"http://127.0.0.1:{mapper_port}/metrics"
                first = await trio.to_thread.run_sync(scrape, murl)
                reads = sample(first, "edgeflock_mapper_device_reads_total", device="sensor-1")
                assert first["edgeflock_mapper_device_online"].type == "gauge"
                assert sample(first, "edgeflock_mapper_device_online", device="sensor-1") == 1
                assert first["edgeflock_mapper_device_request_duration_seconds"].type == "histogram"

                async def more_reads() -> bool:
                    fams = await trio.to_thread.run_sync(scrape, murl)
                    now = sample(fams, "edgeflock_mapper_device_reads_total", device="sensor-1")
                    return now > reads

                await wait_for(more_reads, timeout=10, interval=0.1)
            finally:
                stop(mapper, timeout=10)
                await agent.stop()
                gw.scope.cancel()
            # JSON logs: one object per line, with the device named where known.
            lines = [json.loads(line) for line in log_path.read_text().splitlines() if line]
            assert lines and all(
                {"time", "level", "logger", "message"} <= ln.keys() for ln in lines
            )
            assert any(ln.get("device") == "sensor-1" for ln in lines), lines
            assert all(ln["time"].endswith("Z") for ln in lines)
    finally:
        stop(sim.proc)
