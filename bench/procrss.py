#!/usr/bin/env python3
"""Resident memory of processes that already run, from /proc: the board-stack
figures of BENCHMARKS.md, measured where the stack runs (an emulated board, a Pi).

    python3 bench/procrss.py --name edgeagent --name mosquitto --name modbus-mapper
    python3 bench/procrss.py --pid 1234 --pid 5678 --samples 5 --interval 2

Standard library only, so it runs with the board's own python3. ``--name`` matches
a process whose command name (``/proc/PID/comm``), program, script (``python3
/…/bin/edgeagent``) or module (``python3 -m mosquitto…``) is NAME; every match is
listed. For each process: VmRSS (what BENCHMARKS.md quotes, /1024 → MiB), Pss
(shared pages split among the processes sharing them, from smaps_rollup) and
threads; then the sums. With ``--samples N`` it reads N times, ``--interval``
seconds apart, and prints each process's last and largest VmRSS.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Usage", "find_pids", "format_table", "usage"]


@dataclass(frozen=True)
class Usage:
    pid: int
    name: str
    rss_kib: int
    pss_kib: int | None  # None where smaps_rollup cannot be read (older kernels, permissions)
    threads: int


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _pss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def usage(pid: int, name: str | None = None) -> Usage:
    """One reading of ``pid`` (raises ``OSError`` once it is gone)."""
    st = _status(pid)
    return Usage(
        pid=pid,
        name=name or st.get("Name", "?"),
        rss_kib=int(st.get("VmRSS", "0 kB").split()[0]),
        pss_kib=_pss_kib(pid),
        threads=int(st.get("Threads", "0")),
    )


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _names_of(pid: int) -> set[str]:
    """What ``--name`` can match for ``pid``: comm, program, and under an
    interpreter the script or ``-m`` module."""
    names: set[str] = set()
    try:
        names.add(Path(f"/proc/{pid}/comm").read_text().strip())
    except OSError:
        return names
    argv = _argv(pid)
    if argv:
        names.add(os.path.basename(argv[0]))
        rest = [a for a in argv[1:] if not a.startswith("-X") and a not in ("-u", "-E", "-s")]
        if os.path.basename(argv[0]).startswith("python") and rest:
            if rest[0] == "-m" and len(rest) > 1:
                names.add(rest[1])
            elif not rest[0].startswith("-"):
                names.add(os.path.basename(rest[0]))
    return names


def find_pids(name: str) -> list[int]:
    """Every running process that ``name`` matches (this one excluded)."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me and name in _names_of(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def format_table(rows: list[Usage], peaks: dict[int, int] | None = None) -> str:
    """The per-process lines and the sums, in MiB."""
    lines = []
    for u in rows:
        pss = f"{u.pss_kib / 1024:6.1f}" if u.pss_kib is not None else "     ?"
        peak = f"  max {peaks[u.pid] / 1024:.1f}" if peaks and u.pid in peaks else ""
        lines.append(
            f"{u.name:16s} pid {u.pid:>7}  VmRSS {u.rss_kib / 1024:6.1f} MiB  "
            f"Pss {pss} MiB  threads {u.threads:>3}{peak}"
        )
    rss = sum(u.rss_kib for u in rows)
    pss_values = [u.pss_kib for u in rows]
    pss_sum = f"{sum(p for p in pss_values if p is not None) / 1024:6.1f}"
    if None in pss_values:
        pss_sum += " (some unknown)"
    lines.append(
        f"{'total':16s} {len(rows):>3} procs   VmRSS {rss / 1024:6.1f} MiB  Pss {pss_sum} MiB"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", action="append", default=[], help="a process name (repeatable)")
    ap.add_argument("--pid", action="append", type=int, default=[], help="a PID (repeatable)")
    ap.add_argument("--samples", type=int, default=1, help="readings to take")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    args = ap.parse_args(argv)
    targets: dict[int, str | None] = {pid: None for pid in args.pid}
    missing = []
    for name in args.name:
        pids = find_pids(name)
        if not pids:
            missing.append(name)
        for pid in pids:
            targets[pid] = name
    if missing:
        print(f"error: no running process named {', '.join(missing)}", file=sys.stderr)
        return 1
    if not targets:
        ap.error("give at least one --name or --pid")
    peaks: dict[int, int] = {}
    rows: list[Usage] = []
    for i in range(max(1, args.samples)):
        if i:
            time.sleep(args.interval)  # the sampling period itself, not a wait for a condition
        try:
            rows = [usage(pid, name) for pid, name in targets.items()]
        except OSError as exc:
            print(f"error: a process went away: {exc}", file=sys.stderr)
            return 1
        for u in rows:
            peaks[u.pid] = max(peaks.get(u.pid, 0), u.rss_kib)
    print(format_table(rows, peaks if args.samples > 1 else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
