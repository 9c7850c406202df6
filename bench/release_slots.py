"""Agent release slots on this machine: how long a release takes to install (the
first one, as first boot does it, and a version bump that reuses the unchanged
packages of the current release), what a release costs on disk, the launcher's
memory while it supervises a trial, and that direct mode leaves no launcher.

Releases are this tree and this tree with a bumped version, each ``edgeflash
bundle --arch x86_64`` packed as the release tar; the agents are real and joined
to a real gateway.

.venv/bin/python bench/release_slots.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import Gateway, agent_status, machine, rss_kib, wait

from edgeagent._slots import Slots
from edgeagent._version import VERSION
from tests.edgeagent.release_fixtures import build_release

BUMPED = "0.99.1"


def disk_bytes(root: Path) -> int:
    """Bytes the files under ``root`` take, each hard-linked inode once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def timed_installs(work: Path, base: Path, bumped: Path, rounds: int) -> dict[str, object]:
    full, reuse, disk_full, disk_bump = [], [], [], []
    for n in range(rounds):
        slots = Slots(work / f"R{n}", work / f"D{n}")
        t = time.monotonic()
        slots.first_install(VERSION, base)
        full.append(time.monotonic() - t)
        disk_full.append(disk_bytes(slots.root))
        t = time.monotonic()
        slots.install(BUMPED, bumped)
        reuse.append(time.monotonic() - t)
        disk_bump.append(disk_bytes(slots.root) - disk_full[-1])
        if n < rounds - 1:
            shutil.rmtree(slots.root)
    return {
        "install_full_s": round(statistics.median(full), 2),
        "install_bump_reusing_s": round(statistics.median(reuse), 2),
        "install_full_all_s": [round(x, 2) for x in full],
        "install_bump_all_s": [round(x, 2) for x in reuse],
        "disk_first_release_mib": round(disk_full[-1] / 2**20, 1),
        "disk_bumped_release_mib": round(disk_bump[-1] / 2**20, 1),
    }


def agent_pid(data: Path) -> int:
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{data / 'meta.db'}?mode=ro", uri=True)
        row = db.execute("SELECT value FROM state WHERE name = 'pid'").fetchone()
        db.close()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


def connected(data: Path, pid: int | None = None) -> bool:
    st = agent_status(data)
    return bool(st["connected"]) and (pid is None or agent_pid(data) == pid)


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def launcher_figures(work: Path, slots: Slots) -> dict[str, object]:
    gateway = Gateway(work / "gateway")
    data = work / "data"
    slots = Slots(slots.root, data)
    out: dict[str, object] = {}
    gateway.start()
    procs: list[subprocess.Popen[bytes]] = []
    log = open(work / "launch.log", "ab")
    try:
        gateway.join("bench-ota", data)
        (data / "agent.toml").write_text("backoff_base = 0.2\nbackoff_cap = 1.0\n")
        argv = [str(slots.root / "launcher/bin/edgeagent"), "launch", "--data-dir", str(data),
                "--releases", str(slots.root), "--", "--heartbeat", "1"]  # fmt: skip
        t = time.monotonic()
        procs.append(subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True))
        pid = procs[-1].pid
        wait(lambda: connected(data, pid), 60, "the agent, direct")
        out["direct_start_to_connected_s"] = round(time.monotonic() - t, 2)
        out["direct_leaves_no_launcher"] = agent_pid(data) == pid and children(pid) == []
        slots.switch(BUMPED, job="bench", uid="bench", health_timeout=300, meta_db=data / "meta.db")
        procs[-1].send_signal(signal.SIGTERM)
        procs[-1].wait(30)
        # The gateway away: the new agent cannot confirm itself healthy, so the
        # launcher stays as its supervisor while it is measured.
        gateway.stop()
        t = time.monotonic()
        procs.append(subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True))
        sup = procs[-1].pid
        wait(lambda: children(sup) and agent_pid(data) in children(sup), 60, "the agent on trial")
        out["trial_start_to_agent_running_s"] = round(time.monotonic() - t, 2)
        time.sleep(3)
        out["supervisor_rss_kib"] = rss_kib(sup)
        out["trial_agent_rss_kib"] = rss_kib(agent_pid(data))
        # Back: the agent resyncs, marks itself healthy, the launcher restarts it direct.
        t = time.monotonic()
        gateway.start()
        wait(lambda: connected(data, sup), 60, "the agent, direct again")
        out["gateway_back_to_direct_connected_s"] = round(time.monotonic() - t, 2)
        out["direct_after_trial_leaves_no_launcher"] = children(sup) == []
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        gateway.stop()
        log.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgeflock-slots-bench-"))
    try:
        t = time.monotonic()
        base = build_release(work, VERSION)
        bumped = build_release(work, BUMPED)
        figures: dict[str, object] = {
            "machine": machine(),
            "bundle_and_pack_s_each": round((time.monotonic() - t) / 2, 1),
            "release_archive_mib": round(bumped.stat().st_size / 2**20, 1),
        }
        figures.update(timed_installs(work, base, bumped, args.rounds))
        last = Slots(work / f"R{args.rounds - 1}", work / "unused")
        figures.update(launcher_figures(work, last))
        print(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
