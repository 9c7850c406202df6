"""Releases of this tree for the slot and launcher tests, built once per session
(three ``edgeflash bundle --arch x86_64`` runs, ~10 s each here), and one releases
root with them installed (one full install, two reusing the first)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgeagent._slots import Slots
from edgeagent._version import VERSION

from .release_fixtures import build_release

GOOD = "0.99.1"  # this tree with a bumped version
# ... whose agent, as `edgeagent run` imports it, writes a newer schema version into
# the store (as an agent that migrated it would) and then fails.
CRASH = "0.99.2"
CRASH_PATCH = """
import os as _os, sqlite3 as _sqlite3, sys as _sys
if "--data-dir" in _sys.argv:
    _db = _sqlite3.connect(_os.path.join(_sys.argv[_sys.argv.index("--data-dir") + 1], "meta.db"))
    _db.execute("PRAGMA user_version=7")
    _db.commit()
    _db.close()
raise RuntimeError("edgeflock 0.99.2 is broken on purpose")
"""


@dataclass(frozen=True)
class Releases:
    base: Path  # this tree as it is (VERSION)
    good: Path
    crash: Path
    build_seconds: float


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    work = tmp_path_factory.mktemp("releases")
    started = time.monotonic()
    base = build_release(work, VERSION)
    good = build_release(work, GOOD)
    crash = build_release(work, CRASH, agent_patch=CRASH_PATCH)
    return Releases(base, good, crash, time.monotonic() - started)


@dataclass
class Installed:
    slots: Slots
    seconds: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="session")
def installed(releases: Releases, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """R with the base release as launcher and current (a full install, as first
    boot does), and GOOD and CRASH installed beside it (reusing the base's
    packages). Tests that use it reset the pointers and use a data dir of their own."""
    root = tmp_path_factory.mktemp("installed")
    slots = Slots(root / "R", root / "unused-data")
    out = Installed(slots)
    started = time.monotonic()
    slots.first_install(VERSION, releases.base)
    out.seconds["full"] = time.monotonic() - started
    for version, archive in ((GOOD, releases.good), (CRASH, releases.crash)):
        started = time.monotonic()
        slots.install(version, archive)
        out.seconds[version] = time.monotonic() - started
        slots.set_link("previous", version)  # kept while the next one installs
    slots.set_link("previous", None)
    return out


def spawn_launcher(
    data: Path, root: Path, *run_args: str, from_slot: bool = False
) -> subprocess.Popen[bytes]:
    """``edgeagent launch --data-dir data --releases root -- --heartbeat 1 run_args…``
    in a session of its own (the agent it supervises on trial is in it too);
    this tree's launcher, or with ``from_slot`` the board's own as its unit runs
    it (``root/launcher/bin/edgeagent``). Output in ``data/launch.log``."""
    argv = (
        [str(root / "launcher" / "bin" / "edgeagent")]
        if from_slot
        else [sys.executable, "-m", "edgeagent._cli"]
    )
    argv += ["launch", "--data-dir", str(data)]
    argv += ["--releases", str(root), "--", "--heartbeat", "1", *run_args]
    with open(data / "launch.log", "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)


@pytest.fixture
def launched() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Launchers a test started; each one's session is ended afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
