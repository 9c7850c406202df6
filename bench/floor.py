"""The agent's memory floor: what its dependencies hold before any of its own code
runs. One fresh interpreter, started with the environment of the board's units
(PYTHONOPTIMIZE=2, PYTHONNODEBUGRANGES=1), imports the stack a step at a time and
reads its VmRSS after each (after a garbage collection), cumulatively:

    python bench/floor.py [--python PATH] [--json]

The steps: the interpreter alone (with ``site``, as a venv starts); ``ssl`` (TLS to
the hub; loads OpenSSL); ``trio``; ``trio_websocket``; ``apsw``; ``cbor2`` — the
pinned libraries without which the agent does not start; then what edged and the
EventBus bring: paho (through ``edgeio._mqtt``, as the agent imports it), protobuf
with the CRI messages, ``h2``; last the agent's own modules (``edgeagent._app``,
edged's h2 client and the EventBus). Imports only: no connection, task, SQLite
page or pod is counted, so the running agent is above the last line.

bench/board.py runs the same ladder inside the emulated arm64 board (``LADDER`` is
the program both run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

STEPS: list[tuple[str, tuple[str, ...]]] = [
    ("interpreter (site)", ()),
    ("+ ssl (OpenSSL)", ("ssl",)),
    ("+ trio", ("trio",)),
    ("+ trio_websocket", ("trio_websocket",)),
    ("+ apsw", ("apsw",)),
    ("+ cbor2", ("cbor2",)),
    ("+ paho-mqtt (as edgeio._mqtt loads it)", ("edgeio._mqtt:_import_paho",)),
    ("+ protobuf, CRI messages", ("edgeagent.edged._cri",)),
    ("+ h2", ("h2.connection",)),
    ("+ the agent's modules", ("edgeagent._app", "edgeagent.edged._h2", "edgeagent._eventbus")),
]
PINNED_LAST = "+ cbor2"  # the last step of the pinned stack the agent cannot start without

# What the fresh interpreter runs: one line per step, "name<TAB>VmRSS KiB<TAB>modules".
# Nothing is imported for the measuring itself (``gc`` and ``sys`` are built in); a
# "module:function" step imports the module and calls the function.
LADDER = f"""
import gc, sys
def rss():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
for name, modules in {STEPS!r}:
    for m in modules:
        mod, _, fn = m.partition(':')
        __import__(mod)
        if fn:
            getattr(sys.modules[mod], fn)()
    gc.collect()
    print(name, rss(), len(sys.modules), sep='\\t', flush=True)
"""

UNIT_ENV = {"PYTHONOPTIMIZE": "2", "PYTHONNODEBUGRANGES": "1"}


def parse(out: str) -> list[tuple[str, int, int]]:
    """The ladder's lines as (step, VmRSS KiB, modules loaded)."""
    rows = []
    for line in out.splitlines():
        name, kib, mods = line.split("\t")
        rows.append((name, int(kib), int(mods)))
    return rows


def table(rows: list[tuple[str, int, int]]) -> str:
    lines = []
    prev = 0
    for name, kib, mods in rows:
        delta = f"+{(kib - prev) / 1024:5.2f}" if prev else " " * 6
        mark = "  <- the pinned stack" if name == PINNED_LAST else ""
        lines.append(f"{name:40s} {kib / 1024:6.1f} MiB {delta}  {mods:4d} modules{mark}")
        prev = kib
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [args.python, "-c", LADDER],
        env={**os.environ, **UNIT_ENV, "PYTHONPATH": str(root)},
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = parse(out)
    print(json.dumps(rows) if args.json else table(rows))


if __name__ == "__main__":
    main()
