"""Gateway /metrics at fleet size: 5,000 devices (one per node, on 5,000
nodes) with 20 numeric reported twin values each = 100,000 samples of
``edgeflock_device_property``, plus every other family. Prints the response
time of GET /metrics (median and worst of --scrapes) and its size.

    .venv/bin/python bench/metrics_scrape.py [--devices 5000] [--properties 20]

The gateway runs in this process on a temporary SQLite store; the devices are
written through the Store (as reports would write them), and the scrape goes
over HTTP on loopback like Prometheus'."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import trio

import edgeproto
from cloudgateway._app import run_gateway
from cloudgateway._config import GatewayConfig, HttpConfig
from cloudgateway._hub import HubConfig


def device(i: int, props: int) -> dict[str, object]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": f"sensor-{i}", "namespace": "default"},
        "spec": {"deviceModelRef": {"name": "m"}, "nodeName": f"node-{i}"},
        "status": {
            "twins": [
                {"propertyName": f"p{p}", "reported": {"value": f"{i % 97 + p * 0.5}"}}
                for p in range(props)
            ]
        },
    }


def scrape(url: str, token: str) -> tuple[float, int]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = resp.read()
    return time.perf_counter() - t0, len(body)


async def main(devices: int, props: int, scrapes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        config = GatewayConfig(
            data_dir=data,
            hub=HubConfig(host="127.0.0.1", port=0),
            join=HttpConfig(host="127.0.0.1", port=0),
            api=HttpConfig(host="127.0.0.1", port=0),
            controllers=False,
        )
        async with trio.open_nursery() as nursery:
            gw = await nursery.start(run_gateway, config)
            token = (data / "admin.token").read_text().strip()
            t0 = time.perf_counter()
            for i in range(devices):
                await gw.store.create(
                    edgeproto.make_key("devices", "default", f"sensor-{i}"), device(i, props)
                )
            print(
                f"wrote {devices} devices x {props} properties in {time.perf_counter() - t0:.1f} s"
            )
            while gw.metrics.device_count() < devices:  # the watch has them all
                await trio.sleep(0.05)
            url = f"http://127.0.0.1:{gw.ports['api']}/metrics"
            times, size = [], 0
            for _ in range(scrapes):
                took, size = await trio.to_thread.run_sync(scrape, url, token)
                times.append(took)
            print(
                f"GET /metrics: {devices * props} device samples, {size / 1e6:.1f} MB; "
                f"median {statistics.median(times) * 1000:.0f} ms, "
                f"worst {max(times) * 1000:.0f} ms over {scrapes} scrapes"
            )
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--properties", type=int, default=20)
    ap.add_argument("--scrapes", type=int, default=10)
    a = ap.parse_args()
    trio.run(main, a.devices, a.properties, a.scrapes)
