"""Bytes per board per minute that ``top`` reporting adds on the hub channel.

A real gateway, containerd and agent (edged on grpcio) with ``--pods`` idle
pods. The agent's hub connection is measured with the kernel's own TCP
counters (``ss -ti``: bytes_sent / bytes_received of its socket, so TLS records,
WebSocket frames, envelopes and the gateway's acks are all counted) over
``--seconds``, first with stats off, then (after a restart) with
``stats_interval = --interval``; the difference divided by the stats reports
the gateway counted (``edgeflock_hub_stats_reports``) is the cost of one
report, and the default interval (30 s) sends two a minute.

.venv/bin/python bench/top_bytes.py [--pods 10] [--interval 5] [--seconds 60]

Runs as root (containerd, runc, cgroups).
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _harness import Gateway, machine, start_agent, wait
from edged import NS, SCRIPT, image_name, pod, rmdir_empty_cgroup_roots

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeproto import Kind, Message, encode_message
from edgeproto.usage import ContainerUsage, NodeUsage, PodUsage, Usage, stats_body


def socket_bytes(hub_port: int) -> tuple[int, int]:
    """(sent, received) by the agent's end of its hub connection."""
    out = subprocess.check_output(
        ["ss", "-tinH", "state", "established", f"( dport = :{hub_port} )"], text=True
    )
    sent = re.search(r"bytes_sent:(\d+)", out)
    received = re.search(r"bytes_received:(\d+)", out)
    if not sent or not received:
        raise RuntimeError(f"no counters for the hub connection in: {out!r}")
    return int(sent.group(1)), int(received.group(1))


def stats_reports(gw: Gateway) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{gw.ports['api']}/metrics")
    req.add_header("Authorization", f"Bearer {gw.token}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    m = re.search(r"^edgeflock_hub_stats_reports(?:_total)?(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    return int(float(m.group(1))) if m else 0  # the text format writes counters as 12.0


def envelope_size(pods: int) -> int:
    """The CBOR envelope of one stats report with ``pods`` one-container pods,
    with large (worst-case width) numbers."""
    u = Usage(cpu=10**15, rate=4 * 10**9, memory=8 << 30)
    sample = NodeUsage(
        time_ms=1_800_000_000_000,
        window_ms=30_000,
        node=u,
        pods=tuple(
            PodUsage("default", f"pod-{i:02d}", (ContainerUsage("main", u),)) for i in range(pods)
        ),
    )
    msg = Message(
        Kind.REPORT, id=123456, res="nodes//pi-0001", op="stats", body={"stats": stats_body(sample)}
    )
    return len(encode_message(msg))


def written(pid: int) -> int:
    """Bytes the process caused to be written to storage (its SQLite: outbox rows, WAL)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def measure(
    gw: Gateway, data: Path, address: str, interval: float, seconds: float
) -> tuple[int, int, int]:
    """(bytes both ways on the hub channel, stats reports, bytes written to
    storage) over ``seconds`` with the given interval (0: off)."""
    (data / "agent.toml").write_text(f"stats_interval = {interval}\n")
    agent = start_agent(data, "--cri", address)
    try:
        wait(lambda: _connected(gw.ports["hub"]), 60, "the agent's hub connection")
        time.sleep(max(2.0, interval + 1))  # past the connect burst and the first report
        s0, r0, n0 = *socket_bytes(gw.ports["hub"]), stats_reports(gw)
        w0 = written(agent.pid)
        time.sleep(seconds)  # the measured period
        s1, r1, n1 = *socket_bytes(gw.ports["hub"]), stats_reports(gw)
        w1 = written(agent.pid)
        return (s1 - s0) + (r1 - r0), n1 - n0, w1 - w0
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)


def _connected(port: int) -> bool:
    try:
        socket_bytes(port)
        return True
    except RuntimeError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=10)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    for n in (0, args.pods):
        print(f"stats report envelope with {n} one-container pods: {envelope_size(n)} bytes CBOR")
    had_root = Path("/sys/fs/cgroup/memory/edgeflock").exists()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ctd = root / "containerd"
        subprocess.run([SCRIPT, "start", "--dir", str(ctd)], check=True, capture_output=True)
        address = f"unix://{ctd}/containerd.sock"
        gw = Gateway(root / "gw")
        try:
            gw.start()
            data = root / "agent"
            node = "bench-top"
            gw.join(node, data)
            image = image_name()
            for i in range(args.pods):
                body = pod(f"p{i:02d}", node, image)
                body["spec"]["hostNetwork"] = True
                gw.api("POST", f"{NS}/pods", body)
            agent = start_agent(data, "--cri", address)

            def running() -> bool:
                items = gw.api("GET", f"{NS}/pods")["items"]
                return sum((p.get("status") or {}).get("phase") == "Running" for p in items) == (
                    args.pods
                )

            try:
                wait(running, 120, "pods Running")
            finally:
                agent.send_signal(signal.SIGTERM)
                agent.wait(30)
            off, _, w_off = measure(gw, data, address, 0, args.seconds)
            on, reports, w_on = measure(gw, data, address, args.interval, args.seconds)
            per_report = (on - off) / max(1, reports)
            print(
                f"hub channel over {args.seconds:.0f} s with {args.pods} pods: stats off "
                f"{off} B, stats every {args.interval:g} s {on} B ({reports} reports)"
            )
            print(
                f"one stats report (TLS + WebSocket + envelope + ack): {per_report:.0f} B; "
                f"per board per minute: {2 * per_report:.0f} B at the default 30 s, "
                f"{6 * per_report:.0f} B at 10 s"
            )
            disk = (w_on - w_off) / max(1, reports)
            print(
                f"agent storage writes over {args.seconds:.0f} s: stats off {w_off} B, on {w_on} B; "
                f"per report {disk:.0f} B, per minute at 30 s {2 * disk:.0f} B"
            )
        finally:
            gw.stop()
            subprocess.run([SCRIPT, "stop", "--dir", str(ctd)], check=False, capture_output=True)
            rmdir_empty_cgroup_roots(["edgeflock"] if not had_root else [])


if __name__ == "__main__":
    main()
