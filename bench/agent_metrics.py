"""Agent resident memory with metrics off vs on (``--metrics 127.0.0.1:PORT``),
idle and connected to a gateway, after a few scrapes when on. What metrics
cost is prometheus_client's import (~3 MiB: it loads http.server, wsgiref,
urllib) plus the listener; the parts' counters are kept either way.

.venv/bin/python bench/agent_metrics.py [--settle 5]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from _harness import (
    Gateway,
    agent_status,
    free_port,
    machine,
    rss_kib,
    start_agent,
    stop_process,
    wait,
)


def measure(agent_dir: Path, settle: float, metrics: bool) -> tuple[int, int]:
    port = free_port()
    extra = ("--metrics", f"127.0.0.1:{port}") if metrics else ()
    agent: subprocess.Popen[bytes] = start_agent(agent_dir, *extra)
    try:
        wait(lambda: agent_status(agent_dir).get("connected"), 60, "connected")
        size = 0
        if metrics:
            for _ in range(3):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    size = len(r.read())
        time.sleep(settle)
        return rss_kib(agent.pid), size
    finally:
        stop_process(agent)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--settle", type=float, default=5.0)
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gw = Gateway(root / "gw")
        gw.start()
        try:
            gw.join("bench-pi", root / "agent")
            off, _ = measure(root / "agent", args.settle, False)
            on, size = measure(root / "agent", args.settle, True)
            off2, _ = measure(root / "agent", args.settle, False)
        finally:
            gw.stop()
    print(f"agent RSS, metrics off: {off / 1024:.1f} MiB, {off2 / 1024:.1f} MiB (again)")
    print(
        f"agent RSS, metrics on:  {on / 1024:.1f} MiB (+{(on - min(off, off2)) / 1024:.1f} MiB); "
        f"a scrape is {size} bytes"
    )


if __name__ == "__main__":
    main()
