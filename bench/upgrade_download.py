"""Agent RSS while it downloads a release over its hub session: releases of
random data of several sizes (10 and 100 MiB by default), pushed to a real
gateway (``--release-key``), each handed to one board by a NodeUpgradeJob.
The agent runs as ``edgeagent launch`` starts it (``EDGEFLOCK_RELEASES``), so
its Upgrader downloads the release (pieces verified, the whole SHA-256
checked); random data is no installable release, so the job then fails at
the install, after the download this measures.

For each size, a fresh agent process: its RSS connected and idle before the
job, its peak RSS (sampled every 20 ms, and the kernel's VmHWM) from the job's
start to the end of the download, and the download's time.

.venv/bin/python bench/upgrade_download.py [--sizes 10,100]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from _harness import PY, Gateway, agent_status, machine, rss_kib, stop_process, wait

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeproto.upgrade import CHUNK_SIZE
from tests.edgeagent.hub_standin import keypair, make_release

RELEASES = "/apis/edgeflock.io/v1alpha1/releases"
JOBS = "/apis/operations.kubeedge.io/v1alpha1/nodeupgradejobs"


def push(gw: Gateway, path: Path, manifest: bytes, signature: bytes, sha: str) -> None:
    gw.api(
        "POST",
        RELEASES,
        {
            "manifest": base64.b64encode(manifest).decode(),
            "signature": base64.b64encode(signature).decode(),
        },
    )
    with open(path, "rb") as f:
        index = 0
        while piece := f.read(CHUNK_SIZE):
            req = urllib.request.Request(
                f"http://127.0.0.1:{gw.ports['api']}{RELEASES}/{sha}/pieces/{index}",
                data=piece,
                method="PUT",
            )
            req.add_header("Authorization", f"Bearer {gw.token}")
            req.add_header("Content-Type", "application/octet-stream")
            with urllib.request.urlopen(req, timeout=60) as resp:
                resp.read()
            index += 1


def node_state(gw: Gateway, job: str, node: str) -> str:
    body = gw.api("GET", f"{JOBS}/{job}")
    for entry in (body.get("status") or {}).get("nodeStatus") or []:
        if entry.get("nodeName") == node:
            return str(entry.get("state", ""))
    return ""


def hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except (OSError, RuntimeError):
                return
            time.sleep(0.02)  # the sampling period, not a wait for a condition


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,100", help="release sizes in MiB")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    private, public = keypair()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "release.pub").write_bytes(public)
        gw = Gateway(root / "gw", **{"release-key": str(root / "release.pub")})
        gw.start()
        node, agent_dir = "bench-ota", root / "agent"
        try:
            gw.join(node, agent_dir)
            for size in sizes:
                version = f"9.0.{size}"
                path = root / f"release-{size}.tar"
                r = make_release(path, size << 20, private, version=version)
                manifest, signature, sha = r.manifest_bytes, r.signature, r.manifest.sha256
                push(gw, path, manifest, signature, sha)
                path.unlink()
                env = {
                    **os.environ,
                    "EDGEFLOCK_RELEASES": str(root / "releases"),
                    "EDGEFLOCK_LAUNCHER": json.dumps(["/bin/true"]),
                }
                log = open(agent_dir / "agent.log", "ab")
                agent = subprocess.Popen(
                    [PY, "-m", "edgeagent._cli", "run", "--data-dir", str(agent_dir)],
                    stdout=log,
                    stderr=log,
                    env=env,
                )
                try:
                    wait(lambda: agent_status(agent_dir)["connected"], 30, "connected")
                    time.sleep(3)  # settle: the idle figure is taken after start-up
                    idle = rss_kib(agent.pid)
                    sampler = Sampler(agent.pid)
                    sampler.start()
                    job = f"bench-{size}"
                    began = time.monotonic()
                    gw.api(
                        "POST",
                        JOBS,
                        {
                            "apiVersion": "operations.kubeedge.io/v1alpha1",
                            "kind": "NodeUpgradeJob",
                            "metadata": {"name": job},
                            "spec": {"version": version, "nodeNames": [node]},
                        },
                    )
                    wait(
                        lambda job=job: node_state(gw, job, node) in ("installing", "failed"),
                        600,
                        "the download",
                    )
                    took = time.monotonic() - began
                    sampler.done.set()
                    sampler.join()
                    rows.append((size, idle, sampler.peak, hwm_kib(agent.pid), took))
                    wait(lambda job=job: node_state(gw, job, node) == "failed", 60, "the end")
                finally:
                    stop_process(agent)
                    log.close()
        finally:
            gw.stop()
    print(f"machine: {machine()}")
    print("release  idle RSS  peak RSS (sampled)  VmHWM  download time")
    for size, idle, peak, hwm, took in rows:
        print(
            f"{size:4d} MiB  {idle / 1024:6.1f} MiB  {peak / 1024:8.1f} MiB  "
            f"{hwm / 1024:8.1f} MiB  {took:6.1f} s ({size / took:.1f} MiB/s)"
        )


if __name__ == "__main__":
    main()
