"""``edgeagent launch`` with real agents of real installed releases (this tree at
its version, bumped, and bumped with an agent that fails at start), joined to a
real gateway; power cuts are kill -9 of the launcher's whole process group. The
agents' own Upgrader confirms a trial healthy after its first resync and reports
a roll back (then clears the record): a trial is kept pending by keeping the
gateway away. Each test starts a few agents (~2 s each here)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from edgeagent._cli import agent_status
from edgeagent._slots import ENV_LAUNCHER, ENV_RELEASES, ENV_TRIAL, Slots, Trial
from edgeagent._version import VERSION
from tests.conftest import Gateway, fill_up, join_node, start_gateway, tmpfs, wait_for

from .conftest import CRASH, GOOD, Installed

NODE = "pi-ota"


class Board:
    """A board's releases root (shared, pointers reset) and its own data dir,
    with the launcher run as the systemd unit would run it."""

    def __init__(self, slots: Slots, log: Path) -> None:
        self.slots = slots
        self.log = log
        self.procs: list[subprocess.Popen[bytes]] = []

    def launcher_argv(self, *opts: str) -> list[str]:
        return [
            str(self.slots.root / "launcher" / "bin" / "edgeagent"), "launch",
            "--data-dir", str(self.slots.data_dir), "--releases", str(self.slots.root),
            "--restart-delay", "0.1", "--stop-timeout", "10", *opts, "--", "--heartbeat", "1",
        ]  # fmt: skip

    def start(self, *opts: str, argv: list[str] | None = None, env: Any = None) -> int:
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                argv or self.launcher_argv(*opts), stdout=log, stderr=log, cwd="/",
                start_new_session=True, env=env,
            )  # fmt: skip
        self.procs.append(proc)
        return proc.pid

    def power_cut(self) -> None:
        """kill -9 of the launcher and everything it started."""
        proc = self.procs[-1]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> int:
        """SIGTERM, as systemd stops the unit: its exit code."""
        proc = self.procs[-1]
        proc.send_signal(signal.SIGTERM)
        return proc.wait(30)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def state(self) -> dict[str, Any]:
        return self.slots.read_state()

    def agent_pid(self) -> int:
        """The pid the running agent wrote into its store."""
        try:
            db = sqlite3.connect(f"file:{self.slots.data_dir / 'meta.db'}?mode=ro", uri=True)
            try:
                row = db.execute("SELECT value FROM state WHERE name = 'pid'").fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            return 0
        return int(row[0]) if row else 0

    async def agent_up(self, pid: int | None = None, *, timeout: float = 60) -> int:
        """Wait for an agent connected to the gateway (with ``pid``): its pid."""

        session = self.procs[-1].pid

        def up() -> int:
            st = agent_status(self.slots.data_dir)
            got = self.agent_pid()
            ours = _live_in_session(got, session)  # not one a power cut left behind
            return got if ours and st["connected"] and (pid is None or got == pid) else 0

        return int(await wait_for(up, timeout, 0.05, what=lambda: self.log.read_text()[-3000:]))

    async def agent_running(self, pid: int | None = None, *, not_pid: int = 0) -> int:
        """Wait for an agent of the latest launch to run (connected or not): its pid."""
        session = self.procs[-1].pid

        def running() -> int:
            got = self.agent_pid()
            ours = _live_in_session(got, session) and got != not_pid
            return got if ours and (pid is None or got == pid) else 0

        return int(await wait_for(running, 60, 0.05, what=lambda: self.log.read_text()[-3000:]))

    async def join(self, gateway: Gateway) -> None:
        await join_node(gateway, NODE, self.slots.data_dir)
        # reconnect quickly once a stopped gateway is back
        (self.slots.data_dir / "agent.toml").write_text("backoff_base = 0.1\nbackoff_cap = 0.5\n")


def _live_in_session(pid: int, session: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and int(fields[3]) == session


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(e.split("=", 1) for e in raw if "=" in e)


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


async def kubelet_version(gateway: Gateway) -> str:
    code, body = await gateway.api("GET", f"/api/v1/nodes/{NODE}")
    info = ((body or {}).get("status") or {}).get("nodeInfo") or {} if code == 200 else {}
    return str(info.get("kubeletVersion", ""))


async def wait_version(gateway: Gateway, version: str) -> None:
    want = f"v1.30.0-edgeflock.{version}"
    await wait_for(lambda: _eq(kubelet_version(gateway), want), 30, 0.05, what=f"node at {want}")


async def _eq(value: Any, want: str) -> bool:
    return bool(await value == want)


@pytest.fixture
def board(installed: Installed, tmp_path: Path) -> Iterator[Board]:
    slots = Slots(installed.slots.root, tmp_path / "data")
    slots.set_link("current", VERSION)
    slots.set_link("launcher", VERSION)
    slots.set_link("previous", None)
    b = Board(slots, tmp_path / "launch.log")
    try:
        yield b
    finally:
        b.cleanup()


def user_version(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


async def test_direct_mode_becomes_the_agent_and_leaves_no_launcher(
    gateway: Gateway, board: Board
) -> None:
    await board.join(gateway)
    pid = board.start()
    assert await board.agent_up(pid) == pid  # the launcher's process IS the agent now
    argv = cmdline(pid)
    assert argv[1:4] == [str(board.slots.root / "current/bin/edgeagent"), "run", "--data-dir"]
    assert argv[-2:] == ["--heartbeat", "1"]
    assert children(pid) == []
    env = environ(pid)
    assert env[ENV_RELEASES] == str(board.slots.root) and ENV_TRIAL not in env
    launcher = json.loads(env[ENV_LAUNCHER])
    assert launcher[:2] == [str(board.slots.root / "launcher/bin/edgeagent"), "launch"]
    await wait_version(gateway, VERSION)
    assert board.stop() == 0


async def test_upgrade_on_trial_then_healthy_restarts_in_direct_mode(
    gateway: Gateway, board: Board
) -> None:
    slots = board.slots
    await board.join(gateway)
    first = await board.agent_up(board.start())
    launcher_env = environ(first)
    # What the Upgrader does: switch while the agent runs, stop it, relaunch().
    slots.switch(
        GOOD, job="job-1", uid="uid-1", health_timeout=120, meta_db=slots.data_dir / "meta.db"
    )
    backup = slots.backup_path(GOOD)
    assert user_version(backup) == 1
    conn = sqlite3.connect(backup)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM state WHERE name = 'node'").fetchone()[0] == 1
    conn.close()
    assert (slots.current_version(), slots.link("previous")) == (GOOD, VERSION)
    trial = slots.trial()
    assert trial is not None and (trial.version, trial.previous, trial.starts) == (GOOD, VERSION, 0)
    assert board.stop() == 0
    relauncher = str(slots.root / "launcher/bin/python")
    code = "from edgeagent._slots import relaunch; relaunch()"
    sup = board.start(argv=[relauncher, "-c", code], env=launcher_env)
    # The new agent, the launcher's child on trial, resyncs and marks itself healthy;
    # the launcher stops it and becomes the agent (direct mode).
    assert await board.agent_up(sup) == sup
    log = board.log.read_text()
    assert f"starting {GOOD} (start 1 of 3)" in log and f"on trial as {GOOD}" in log
    assert f"{GOOD} is healthy: restarting it in direct mode" in log
    assert ENV_TRIAL not in environ(sup) and children(sup) == []
    assert slots.trial() is None and not backup.exists()
    assert slots.rollback_record() is None and slots.broken(GOOD) is None
    await wait_version(gateway, GOOD)
    assert board.stop() == 0


async def test_a_version_failing_at_start_is_rolled_back_with_its_store(
    gateway: Gateway, board: Board
) -> None:
    slots = board.slots
    meta = slots.data_dir / "meta.db"
    await board.join(gateway)
    await board.agent_up(board.start())
    assert board.stop() == 0
    slots.switch(CRASH, job="job-2", uid="uid-2", health_timeout=120, meta_db=meta)
    pid = board.start("--max-starts", "2")
    # Each start writes schema version 7 into the store, then raises: after two,
    # back to the previous release, whose agent reads the store restored (it
    # refuses schema 7), connects, and reports the roll back.
    assert await board.agent_up(pid) == pid
    assert user_version(meta) == 1
    await wait_version(gateway, VERSION)
    reason = slots.broken(CRASH)
    assert reason is not None
    assert reason.startswith(f"{CRASH} stopped at each of 2 starts (last: exit code 1: ")
    assert reason.endswith("RuntimeError: edgeflock 0.99.2 is broken on purpose)")
    await wait_for(lambda: slots.rollback_record() is None, 30, what="the roll back reported")
    assert slots.trial() is None and not slots.backup_path(CRASH).exists()
    assert (slots.current_version(), slots.link("previous")) == (VERSION, None)
    log = board.log.read_text()
    traceback_ends = [ln for ln in log.splitlines() if ln.startswith("RuntimeError: edgeflock")]
    assert len(traceback_ends) == 2  # the agent's stderr, passed on
    assert f"rolling back {CRASH}" in log
    assert f"version {CRASH} was rolled back: {reason}" in log  # the agent's report
    assert board.stop() == 0


async def test_a_version_that_never_connects_is_rolled_back_at_the_deadline_keeping_the_store(
    nursery: trio.Nursery, gateway: Gateway, board: Board
) -> None:
    slots = board.slots
    meta = slots.data_dir / "meta.db"
    await board.join(gateway)
    await board.agent_up(board.start())
    slots.switch(GOOD, job="job-3", uid="uid-3", health_timeout=6, meta_db=meta)
    board.power_cut()  # the agent is gone before it could relaunch: systemd starts the unit
    await gateway.stop()  # ...and the new agent never reaches it
    sup = board.start()
    await board.agent_running(not_pid=sup)
    # What the new agent writes stays: same schema version, no restore.
    with sqlite3.connect(meta, timeout=10) as db:
        db.execute("CREATE TABLE written_on_trial(x)")
        db.execute("INSERT INTO written_on_trial VALUES ('kept')")
    db.close()
    assert await board.agent_running(sup) == sup  # rolled back, direct mode
    reason = f"{GOOD} was not healthy within 6 s of starting"
    assert slots.broken(GOOD) == reason
    assert slots.current_version() == VERSION and slots.trial() is None
    gateway = await start_gateway(nursery, gateway.data_dir, ports=gateway.ports)
    assert await board.agent_up(sup) == sup
    await wait_version(gateway, VERSION)
    with sqlite3.connect(meta) as db:
        assert db.execute("SELECT x FROM written_on_trial").fetchall() == [("kept",)]
    db.close()
    await wait_for(lambda: slots.rollback_record() is None, 30, what="the roll back reported")
    assert f"version {GOOD} was rolled back: {reason}" in board.log.read_text()
    assert board.stop() == 0


async def test_power_cuts_at_each_step_end_on_a_working_version(
    nursery: trio.Nursery, gateway: Gateway, board: Board
) -> None:
    slots = board.slots
    meta = slots.data_dir / "meta.db"
    await board.join(gateway)
    await board.agent_up(board.start())

    # 1. Cut after the trial was written, before the pointers moved (switch()
    # runs inside the agent; this is the launch.json and links it leaves then).
    slots.set_trial(Trial(GOOD, VERSION, "job-4", "uid-4", deadline=0.0, health_timeout=60))
    board.power_cut()
    pid = board.start()
    assert await board.agent_up(pid) == pid
    assert slots.trial() is None and slots.current_version() == VERSION
    assert f"discarding the trial of {GOOD}" in board.log.read_text()

    # 2. Cut right after the switch, then again while the new agent is on trial
    # (the gateway away: it cannot confirm itself healthy yet).
    slots.switch(GOOD, job="job-4", uid="uid-4", health_timeout=60, meta_db=meta)
    board.power_cut()
    await gateway.stop()
    sup = board.start()
    await board.agent_running(not_pid=sup)
    board.power_cut()
    sup = board.start()
    await board.agent_running(not_pid=sup)
    trial = slots.trial()
    assert trial is not None and trial.starts == 2 and not trial.healthy
    gateway = await start_gateway(nursery, gateway.data_dir, ports=gateway.ports)
    assert await board.agent_up(sup) == sup  # healthy after its resync: direct mode
    await wait_version(gateway, GOOD)
    assert slots.trial() is None

    # 3. Every start on trial cut short: the launcher gives up after --max-starts.
    await gateway.stop()
    slots.switch(VERSION, job="job-5", uid="uid-5", health_timeout=60, meta_db=meta)
    for _ in range(2):
        board.power_cut()
        sup = board.start("--max-starts", "2")
        await board.agent_running(not_pid=sup)
    board.power_cut()
    pid = board.start("--max-starts", "2")
    assert await board.agent_running(pid) == pid
    assert slots.broken(VERSION) == (
        f"{VERSION} did not become healthy in 2 starts (power cut or crash while on trial)"
    )
    assert slots.current_version() == GOOD

    # 4. Cut in the middle of a roll back: the next start finishes it.
    slots.switch(CRASH, job="job-6", uid="uid-6", health_timeout=60, meta_db=meta)
    trial = slots.trial()
    assert trial is not None
    slots.begin_rollback(trial, "cut short")
    board.power_cut()
    pid = board.start()
    assert await board.agent_running(pid) == pid
    assert slots.current_version() == GOOD and slots.trial() is None
    assert slots.broken(CRASH) == "cut short"
    gateway = await start_gateway(nursery, gateway.data_dir, ports=gateway.ports)
    assert await board.agent_up(pid) == pid
    await wait_version(gateway, GOOD)
    await wait_for(lambda: slots.rollback_record() is None, 30, what="the roll backs reported")
    assert board.stop() == 0


@pytest.fixture
def full_card(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB tmpfs for the data dir, to fill up."""
    with tmpfs(tmp_path / "card", "16m") as mnt:
        yield mnt


async def test_a_full_card_on_trial_ends_on_the_previous_version(
    gateway: Gateway, board: Board, full_card: Path
) -> None:
    """Starts that cannot be counted are not made: the launcher goes back to the
    previous version, as far as the card lets it record that."""
    slots = board.slots = Slots(board.slots.root, full_card / "data")
    await board.join(gateway)
    await board.agent_up(board.start())
    slots.switch(
        GOOD, job="job-7", uid="uid-7", health_timeout=60, meta_db=slots.data_dir / "meta.db"
    )
    board.power_cut()
    filler = fill_up(full_card)
    pid = board.start()

    def rolled_back() -> bool:
        return f"roll back of {GOOD} incomplete" in board.log.read_text()

    await wait_for(rolled_back, 30, 0.05, what=lambda: board.log.read_text()[-3000:])
    log = board.log.read_text()
    assert f"rolling back {GOOD}: cannot count the starts of {GOOD}: cannot write" in log
    assert "No space left on device" in log
    assert slots.current_version() == VERSION
    # The agent of the previous version runs, whatever it then makes of the card
    # (it may well exit on it: a process gone or a zombie has no command line).
    argv = cmdline(pid) if board.procs[-1].poll() is None else []
    if argv:
        assert argv[1:3] == [str(slots.root / "current/bin/edgeagent"), "run"]
    # Room again: the trial that could not be cleared is discarded (GOOD is not current).
    filler.unlink()
    board.power_cut()
    pid = board.start()
    assert await board.agent_up(pid) == pid
    assert slots.trial() is None and slots.current_version() == VERSION
    assert f"discarding the trial of {GOOD}" in board.log.read_text()
    assert board.stop() == 0
