"""One agent upgrade, measured end to end on this machine: a real gateway
(``--release-key``), a board installed as first boot does (its own releases
root, ``edgeagent launch``), the release of this tree at a bumped version
pushed with ``edgectl upgrade push`` and handed out by a NodeUpgradeJob.

- bytes on the wire: what the board's hub connections received and sent
  while the job ran (the kernel's TCP counters, ``ss -ti``, sampled every
  0.1 s and kept per connection, so TLS records, WebSocket frames, envelopes,
  resyncs and heartbeats all count), beside the release's size;
- time from the job's creation to the board healthy on the new version, with
  the moments each state was first seen (polled every 0.2 s).

.venv/bin/python bench/upgrade.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import PY, Gateway, machine, wait

from edgeagent._slots import Slots
from edgeagent._version import VERSION
from tests.edgeagent.release_fixtures import build_release

BUMPED = "0.99.1"
JOBS = "/apis/operations.kubeedge.io/v1alpha1/nodeupgradejobs"
BIN = Path(PY).parent


class WireCounter(threading.Thread):
    """Bytes over every TCP connection to ``port`` from this host's clients,
    each connection's last reading kept after it closes."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.seen: dict[str, tuple[int, int]] = {}  # local address -> (received, sent)
        self.halt = threading.Event()

    def sample(self) -> None:
        out = subprocess.check_output(
            ["ss", "-tinH", "state", "established", f"( dport = :{self.port} )"], text=True
        )
        for block in re.split(r"\n(?=\S)", out.strip()):
            words = block.split()
            if len(words) < 4:
                continue  # no connection at this moment (the agent is restarting)
            local = words[2] if words[0].isdigit() else words[0]
            rcv = re.search(r"bytes_received:(\d+)", block)
            snt = re.search(r"bytes_sent:(\d+)", block)
            if rcv and snt:
                self.seen[local] = (int(rcv.group(1)), int(snt.group(1)))

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(0.1)

    def totals(self) -> tuple[int, int]:
        return sum(r for r, _ in self.seen.values()), sum(s for _, s in self.seen.values())


def edgectl(gw: Gateway, *argv: str) -> str:
    return subprocess.check_output(
        [str(BIN / "edgectl"), "--server", f"http://127.0.0.1:{gw.ports['api']}",
         "--token", gw.token, *argv], text=True,
    )  # fmt: skip


def one_round(work: Path, bundle: Path, base: Path, key: Path, n: int) -> dict[str, Any]:
    gw = Gateway(work / f"gw{n}", **{"release-key": str(key.with_suffix(".pub"))})
    gw.start()
    launcher: subprocess.Popen[bytes] | None = None
    try:
        edgectl(gw, "upgrade", "push", str(bundle), "--key", str(key))
        node, data, root = f"bench-up-{n}", work / f"data{n}", work / f"opt{n}"
        Slots(root, data).first_install(VERSION, base)
        gw.join(node, data)
        (data / "agent.toml").write_text("backoff_base = 0.05\nbackoff_cap = 0.5\n")
        argv = [str(root / "launcher" / "bin" / "edgeagent"), "launch", "--data-dir", str(data)]
        argv += ["--releases", str(root), "--", "--heartbeat", "5"]
        with open(data / "launch.log", "ab") as log:
            launcher = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)

        def version() -> str:
            info = gw.api("GET", f"/api/v1/nodes/{node}").get("status", {}).get("nodeInfo", {})
            return str(info.get("kubeletVersion", "")).rpartition("edgeflock.")[2]

        wait(lambda: version() == VERSION, 60, "board connected at version N")
        counter = WireCounter(gw.ports["hub"])
        counter.sample()
        start_rcv, start_snt = counter.totals()
        counter.start()
        t0 = time.monotonic()
        edgectl(gw, "upgrade", "start", "--version", BUMPED, "--nodes", node, "--name", "up")
        seen: dict[str, float] = {}
        deadline = t0 + 600
        while time.monotonic() < deadline:
            entries = gw.api("GET", f"{JOBS}/up").get("status", {}).get("nodeStatus", [])
            state = entries[0]["state"] if entries else "pending"
            seen.setdefault(state, time.monotonic() - t0)
            if state in ("healthy", "failed", "rolledBack"):
                break
            time.sleep(0.2)
        wait(lambda: version() == BUMPED, 60, "kubeletVersion of the new version")
        counter.halt.set()
        counter.join()
        rcv, snt = counter.totals()
        return {
            "states": seen,
            "received": rcv - start_rcv,
            "sent": snt - start_snt,
            "connections": len(counter.seen),
        }
    finally:
        if launcher is not None and launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGTERM)
            launcher.wait(timeout=30)
        gw.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-upgrade-") as tmp:
        work = Path(tmp)
        base_tar = build_release(work, VERSION)
        new_tar = build_release(work, BUMPED)
        bundle = work / f"bundle-{BUMPED}"
        key = work / "release.key"
        subprocess.run([str(BIN / "edgectl"), "upgrade", "keygen", "--out", str(key)], check=True)
        size = new_tar.stat().st_size
        bundle_bytes = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
        print(machine())
        print(f"release {BUMPED}: bundle {bundle_bytes:,} bytes, release archive {size:,} bytes")
        for n in range(args.rounds):
            r = one_round(work, bundle, base_tar, key, n)
            states = ", ".join(f"{k} {v:.1f} s" for k, v in r["states"].items())
            print(
                f"round {n + 1}: board received {r['received']:,} bytes "
                f"({r['received'] / size:.3f} x the archive), sent {r['sent']:,} bytes, "
                f"over {r['connections']} hub connection(s); states first seen: {states}"
            )


if __name__ == "__main__":
    main()
