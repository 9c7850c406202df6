"""Device twin end to end: MQTT publish → agent twin → outbox → gateway status.

Real processes on loopback: mosquitto (scripts/mosquitto), the gateway, the
agent with ``--mqtt``; this process is the mapper (paho) and watches the
gateway's Device objects (API watch) to see when each value arrived.

.venv/bin/python bench/twin_throughput.py [--devices 4] [--props 5] [--updates 20000]
    [--rate 100] [--seconds 10]

Prints:
- throughput: twin updates/s from the first MQTT publish until the gateway shows
  the last value of every property (coalescing means intermediate values are
  superseded, as intended; every update is answered on twin/update/result);
- latency at a fixed rate: per update, the time until the gateway shows that
  value or a newer one of the same property (p50/p99/max);
- SQLite bytes written per update by the agent: /proc/PID/io write_bytes of the
  agent process (its only disk writer is SQLite; logging at WARNING) over the
  throughput run, and the same at the fixed rate.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from _harness import (
    Gateway,
    agent_status,
    cpu_seconds,
    machine,
    mosquitto,
    rss_kib,
    start_agent,
    wait,
)
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
API = "/apis/devices.kubeedge.io/v1beta1/namespaces/default"
NODE = "bench-pi"


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes")


class Watcher:
    """Follows the gateway's Device objects; records when each value first shows."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.lock = threading.Lock()
        self.latest: dict[tuple[str, str], int] = {}  # (device, prop) -> value
        self.seen: list[tuple[float, str, str, int]] = []  # time, device, prop, value
        self.changed = threading.Condition(self.lock)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.ports["api"])
        conn.request(
            "GET",
            f"{API}/devices?watch=true",
            headers={"Authorization": f"Bearer {self.gw.token}"},
        )
        resp = conn.getresponse()
        while True:
            line = resp.readline()
            if not line:
                return
            now = time.monotonic()
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            obj = ev.get("object") or {}
            name = (obj.get("metadata") or {}).get("name", "")
            for t in (obj.get("status") or {}).get("twins") or []:
                rep = t.get("reported") or {}
                try:
                    v = int(rep.get("value", ""))
                except ValueError:
                    continue
                key = (name, t["propertyName"])
                with self.lock:
                    if self.latest.get(key, -1) < v:
                        self.latest[key] = v
                        self.seen.append((now, name, t["propertyName"], v))
                        self.changed.notify_all()

    def wait_all(self, want: dict[tuple[str, str], int], timeout: float) -> float:
        deadline = time.monotonic() + timeout
        with self.lock:
            while any(self.latest.get(k, -1) < v for k, v in want.items()):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = {
                        k: self.latest.get(k) for k, v in want.items() if self.latest.get(k, -1) < v
                    }
                    raise RuntimeError(f"gateway never showed {missing}")
                self.changed.wait(left)
            return max(t for t, *_ in self.seen)


class Mapper:
    def __init__(self, port: int) -> None:
        self.results = 0
        self.errors = 0
        self.last = 0.0
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-mapper-{port}")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("$hw/events/device/+/+/twin/update/result", qos=0)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        body = json.loads(msg.payload)
        with self.lock:
            self.last = time.monotonic()
            if "code" in body:
                self.errors += 1
            else:
                self.results += 1

    def report(self, device: str, prop: str, value: int) -> None:
        ms = int(time.time() * 1000)
        body = {
            "event_id": f"{device}-{prop}-{value}",
            "timestamp": ms,
            "twin": {
                prop: {
                    "actual": {"value": str(value), "metadata": {"timestamp": ms}},
                    "metadata": {"type": "int"},
                }
            },
        }
        # KubeEdge 1.17+ topics: the device as namespace/name
        self.client.publish(
            f"$hw/events/device/default/{device}/twin/update", json.dumps(body), qos=1
        )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--props", type=int, default=5)
    ap.add_argument("--updates", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    devices = [f"sensor-{i}" for i in range(args.devices)]
    props = [f"p{j}" for j in range(args.props)]
    print(
        f"machine: {machine()}, load average before: {Path('/proc/loadavg').read_text().split()[0]}"
    )
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        port = stack.enter_context(mosquitto(root / "mq"))
        gw = Gateway(root / "gw")
        agent = None
        mapper = None
        try:
            gw.start()
            gw.api(
                "POST",
                f"{API}/devicemodels",
                {
                    "apiVersion": "devices.kubeedge.io/v1beta1",
                    "kind": "DeviceModel",
                    "metadata": {"name": "bench", "namespace": "default"},
                    "spec": {"properties": [{"name": p, "type": "INT"} for p in props]},
                },
            )
            for d in devices:
                gw.api(
                    "POST",
                    f"{API}/devices",
                    {
                        "apiVersion": "devices.kubeedge.io/v1beta1",
                        "kind": "Device",
                        "metadata": {"name": d, "namespace": "default"},
                        "spec": {
                            "deviceModelRef": {"name": "bench"},
                            "nodeName": NODE,
                            "properties": [{"name": p} for p in props],
                        },
                    },
                )
            agent_dir = root / "agent"
            gw.join(NODE, agent_dir)
            agent = start_agent(agent_dir, "--mqtt", f"tcp://127.0.0.1:{port}")
            wait(
                lambda: agent_status(agent_dir)["objects"].get("Device") == len(devices),
                30,
                "devices",
            )
            watcher = Watcher(gw)
            mapper = Mapper(port)
            # Warm up until the agent answers for every device.
            for d in devices:
                mapper.report(d, props[0], 0)
            wait(lambda: mapper.results >= len(devices), 30, "agent answering")
            time.sleep(1)

            # Throughput.
            n = args.updates
            per = len(devices) * len(props)
            w0 = write_bytes(agent.pid)
            c0 = cpu_seconds(agent.pid)
            t0 = time.monotonic()
            want: dict[tuple[str, str], int] = {}
            for i in range(n):
                d, p = devices[i % len(devices)], props[(i // len(devices)) % len(props)]
                v = 1 + i // per
                mapper.report(d, p, v)
                want[(d, p)] = v
            t_pub = time.monotonic() - t0
            t_end = watcher.wait_all(want, 120)
            try:
                wait(lambda: mapper.results + mapper.errors >= n + len(devices), 30, "results")
            except RuntimeError:
                print(f"WARNING: {mapper.results + mapper.errors - len(devices)} of {n} answered")
            answered = mapper.last - t0
            cpu = cpu_seconds(agent.pid) - c0
            time.sleep(1)  # last acks and checkpoints
            w1 = write_bytes(agent.pid)
            elapsed = t_end - t0
            print(f"agent answered all {n} on MQTT after {answered:.2f} s: {n / answered:,.0f}/s")
            print(
                f"agent CPU: {cpu / n * 1e6:.0f} us per update end to end "
                f"(one core's worth: {n / cpu:,.0f} updates/s)"
            )
            print(
                f"throughput: {n} updates ({len(devices)} devices x {len(props)} properties) "
                f"published in {t_pub:.2f} s, all latest values at the gateway after "
                f"{elapsed:.2f} s: {n / elapsed:,.0f} updates/s end to end "
                f"(results {mapper.results - len(devices)}, errors {mapper.errors})"
            )
            print(
                f"sqlite writes (throughput run): {(w1 - w0) / n:,.0f} bytes/update "
                f"({(w1 - w0) / 1e6:.1f} MB for {n} updates)"
            )

            # Latency at a fixed rate.
            base = max(want.values()) + 1
            sent: dict[tuple[str, str], list[tuple[int, float]]] = {}
            total = int(args.rate * args.seconds)
            w0 = write_bytes(agent.pid)
            start = time.monotonic()
            for i in range(total):
                target = start + i / args.rate
                delay = target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                d, p = devices[i % len(devices)], props[0]
                v = base + i
                sent.setdefault((d, p), []).append((v, time.monotonic()))
                mapper.report(d, p, v)
            final = {k: vs[-1][0] for k, vs in sent.items()}
            watcher.wait_all(final, 30)
            time.sleep(1)
            w1 = write_bytes(agent.pid)
            lat: list[float] = []
            with watcher.lock:
                seen = list(watcher.seen)
            for (d, p), vs in sent.items():
                shows = sorted((v, t) for t, dd, pp, v in seen if dd == d and pp == p and v >= base)
                j = 0
                for v, t_sent in vs:
                    while shows[j][0] < v:
                        j += 1
                    lat.append(shows[j][1] - t_sent)
            ms = [x * 1000 for x in lat]
            print(
                f"latency at {args.rate:.0f} updates/s for {args.seconds:.0f} s ({total} updates): "
                f"p50 {pct(ms, 50):.1f} ms, p99 {pct(ms, 99):.1f} ms, max {max(ms):.1f} ms"
            )
            print(f"sqlite writes (at {args.rate:.0f}/s): {(w1 - w0) / total:,.0f} bytes/update")
            st = agent_status(agent_dir)
            print(
                f"agent outbox depth at the end: {st.get('outbox')}; "
                f"agent RSS {rss_kib(agent.pid) / 1024:.1f} MB"
            )
        finally:
            if mapper is not None:
                mapper.close()
            if agent is not None:
                agent.terminate()
                agent.wait(10)
            gw.stop()


if __name__ == "__main__":
    main()
