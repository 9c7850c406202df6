"""The Upgrader in real agent processes (``edgeagent run`` started with the
environment ``edgeagent launch`` gives it), real release slots
(``edgeagent._slots``), real kill -9.

Where the fault is the gateway's (a piece that fails its hash, pieces held
back so the agent can be killed mid-download, an assignment withdrawn in the
middle), the agent talks to ``hub_standin.StandInHub`` (real TLS and
protocol; a gateway cannot be made to corrupt a piece). The rest runs against
the real gateway with a real NodeUpgradeJob.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from edgeagent._slots import RollbackRecord, Slots, Trial
from edgeagent._version import VERSION
from edgeproto.upgrade import CHUNK_SIZE
from tests.conftest import start_gateway, wait_for
from tests.edgeagent.hub_standin import (
    ServedRelease,
    StandInHub,
    assignment_of,
    keypair,
    make_release,
)
from tests.edgeagent.upgrade_fixtures import node_status_of, push_release, start_job
from tests.test_join_release_key import join_cli

FAST = "heartbeat = 1.0\nbackoff_base = 0.05\nbackoff_cap = 0.3\nstatus_interval = 5.0\n"


class AgentProcess:
    """``edgeagent run`` as ``edgeagent launch`` starts it (EDGEFLOCK_RELEASES,
    EDGEFLOCK_LAUNCHER; EDGEFLOCK_TRIAL on trial)."""

    def __init__(self, data: Path, releases: Path, *, trial: str | None = None) -> None:
        self.data = data
        self.releases = releases
        self.trial = trial
        self.proc: subprocess.Popen[bytes] | None = None
        (data / "agent.toml").write_text(FAST)

    def start(self) -> None:
        env = {
            **os.environ,
            "EDGEFLOCK_RELEASES": str(self.releases),
            "EDGEFLOCK_LAUNCHER": json.dumps(["/bin/true"]),
        }
        env.pop("EDGEFLOCK_TRIAL", None)
        if self.trial:
            env["EDGEFLOCK_TRIAL"] = self.trial
        args = [sys.executable, "-m", "edgeagent._cli", "run", "--data-dir", str(self.data)]
        with open(self.data / "agent.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env=env)

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return (self.data / "agent.log").read_text(errors="replace")

    def downloads(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.data / "upgrade") if not n.startswith("meta"))
        except FileNotFoundError:
            return []


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for a in started:
        a.stop()


def good_pieces(path: Path, release: ServedRelease) -> int:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return 0
    with f:
        return sum(
            hashlib.sha256(f.read(CHUNK_SIZE)).hexdigest() == h for h in release.manifest.chunks
        )


async def standin(
    nursery: trio.Nursery, tmp_path: Path, pieces: int, agents: list[AgentProcess], **kw: object
) -> tuple[StandInHub, ServedRelease, AgentProcess]:
    private, public = keypair()
    release = make_release(tmp_path / "release.tar", pieces * CHUNK_SIZE - 100, private)
    hub = StandInHub(tmp_path / "gw", "pi-up")
    hub.releases[release.manifest.sha256] = release
    hub.annotation = assignment_of(release)
    for k, v in kw.items():
        setattr(hub, k, v)
    await hub.start(nursery)
    data = tmp_path / "agent"
    hub.enroll(data)
    (data / "release.pub").write_bytes(public)
    agent = AgentProcess(data, tmp_path / "releases")
    agents.append(agent)
    return hub, release, agent


async def test_a_download_killed_with_9_resumes_from_the_pieces_it_kept(
    nursery: trio.Nursery, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    hub, release, agent = await standin(nursery, tmp_path, 64, agents, hold_after_chunks=24)
    part = agent.data / "upgrade" / f"{release.manifest.sha256}.part"
    agent.start()
    await wait_for(lambda: good_pieces(part, release) >= 24, timeout=20, what="24 pieces on disk")
    agent.kill9()
    kept = good_pieces(part, release)
    assert part.exists() and kept >= 24
    assert hub.states()[:1] == ["downloading"]
    before = hub.chunk_requests.copy()
    hub.hold_after_chunks = None
    hub.resume.set()
    agent.start()
    await wait_for(lambda: "failed" in hub.states(), timeout=30, what=lambda: str(hub.states()))
    again = {i: n - before[i] for i, n in hub.chunk_requests.items() if n > before[i]}
    assert not [i for i in again if before[i]], "pieces kept on disk were fetched again"
    assert len(again) == 64 - kept
    assert f"resuming with {kept} of 64 pieces" in agent.log()
    # The archive was verified whole and handed to the slots: random bytes
    # are no release, so the install fails, and says so.
    states = hub.states()
    assert states[-2:] == ["installing", "failed"], states
    reason = hub.upgrade_reports()[-1]["body"]["reason"]
    assert reason.startswith("install of 9.9.9 failed:"), reason
    assert agent.downloads() == []  # nothing left of it


async def test_a_piece_that_fails_its_hash_twice_fails_the_job_for_good(
    nursery: trio.Nursery, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    hub, _, agent = await standin(nursery, tmp_path, 16, agents, corrupt={5: 2})
    agent.start()
    await wait_for(lambda: "failed" in hub.states(), timeout=20, what=lambda: str(hub.states()))
    assert hub.chunk_requests[5] == 2  # a fresh copy was asked for once
    assert "piece 5 failed its SHA-256 check twice" in hub.upgrade_reports()[-1]["body"]["reason"]
    assert agent.downloads() == []
    # Remembered for the job's uid: a restart does not try it again.
    agent.stop()
    asked, reports = sum(hub.chunk_requests.values()), len(hub.upgrade_reports())
    log_size = len(agent.log())
    agent.start()
    await wait_for(
        lambda: "(uid uid-1): failed here already" in agent.log()[log_size:],
        timeout=10,
        what="the restarted agent looked at the assignment",
    )
    assert sum(hub.chunk_requests.values()) == asked
    assert len(hub.upgrade_reports()) == reports


async def test_an_assignment_withdrawn_mid_download_stops_it_and_removes_the_part(
    nursery: trio.Nursery, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    hub, release, agent = await standin(nursery, tmp_path, 64, agents, hold_after_chunks=10)
    part = agent.data / "upgrade" / f"{release.manifest.sha256}.part"
    agent.start()
    await wait_for(lambda: good_pieces(part, release) >= 10, timeout=20)
    await hub.set_annotation(None)
    await wait_for(lambda: agent.downloads() == [], timeout=10, what="the partial download removed")
    hub.resume.set()
    assert "assignment changed" in agent.log()
    assert hub.states() == ["downloading"]  # nothing more to say: the job is gone


async def test_a_rollback_record_is_reported_then_cleared_and_the_version_not_retried(
    nursery: trio.Nursery, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    hub, release, agent = await standin(nursery, tmp_path, 4, agents)
    slots = Slots(agent.releases, agent.data)
    trial = Trial(version="9.9.9", previous=VERSION, job="up-1", uid="uid-1", deadline=0.0)
    slots.set_trial(trial)
    slots.finish_rollback(slots.begin_rollback(trial, "the agent crashed 3 times at start"))
    assert slots.rollback_record() == RollbackRecord(
        "up-1", "uid-1", "9.9.9", "the agent crashed 3 times at start", slots.rollback_record().time
    )
    # The same job still assigns 9.9.9; a second job (another uid) asks for it too.
    agent.start()
    await wait_for(lambda: "rolledBack" in hub.states(), timeout=20)
    body = hub.upgrade_reports()[0]["body"]
    assert body["reason"] == "the agent crashed 3 times at start" and body["uid"] == "uid-1"
    await wait_for(lambda: slots.rollback_record() is None, timeout=10)
    await hub.set_annotation(assignment_of(release, job="up-2", uid="uid-2"))
    await wait_for(lambda: len(hub.states()) == 2, timeout=10, what=lambda: str(hub.states()))
    last = hub.upgrade_reports()[-1]["body"]
    assert (last["state"], last["uid"]) == ("failed", "uid-2")
    assert "was rolled back on this board before" in last["reason"]
    assert hub.chunk_requests == {}  # never downloaded again


async def test_on_trial_the_agent_marks_itself_healthy_after_its_first_resync(
    nursery: trio.Nursery, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    hub, release, agent = await standin(nursery, tmp_path, 4, agents)
    hub.annotation = assignment_of(release, version=VERSION, job="up-t", uid="uid-t")
    slots = Slots(agent.releases, agent.data)
    slots.set_trial(
        Trial(version=VERSION, previous="0.0.1", job="up-t", uid="uid-t", deadline=time.time())
    )
    agent.trial = VERSION
    agent.start()
    await wait_for(lambda: "healthy" in hub.states(), timeout=20, what=lambda: str(hub.states()))
    trial = slots.trial()
    assert trial is not None and trial.healthy
    body = hub.upgrade_reports()[0]["body"]
    assert (body["job"], body["uid"], body["version"]) == ("up-t", "uid-t", VERSION)
    # The launcher now restarts it in direct mode: the assignment (this
    # version, the same job) is done, and is not reported again.
    agent.stop()
    agent.trial = None
    slots.end_trial()
    log_size = len(agent.log())
    agent.start()
    await wait_for(
        lambda: "(uid uid-t): healthy here already" in agent.log()[log_size:],
        timeout=10,
        what="the restarted agent looked at the assignment",
    )
    assert hub.states() == ["healthy"]


# ---- against the real gateway and a real job ---------------------------------------------


async def test_boards_refuse_a_bad_signature_no_key_and_too_little_disk(
    nursery: trio.Nursery, tmp_path: Path, agents: list[AgentProcess], small_fs: Path
) -> None:
    """Three boards, one job, each failing for its own reason, reported into
    the job's status by the real gateway (started without a release key, so
    it stores a release signed by any key)."""
    signer, _ = keypair()
    _, trusted = keypair()  # the boards trust another key than the one that signed
    gw = await start_gateway(nursery, tmp_path / "gw")
    release = make_release(tmp_path / "r.tar", 4 * CHUNK_SIZE, signer)
    await push_release(gw, release)
    (tmp_path / "trusted.pub").write_bytes(trusted)
    boards = {"pi-sig": "", "pi-nokey": "", "pi-disk": ""}
    for node in boards:
        data = tmp_path / node
        key = [] if node == "pi-nokey" else ["--release-key", str(tmp_path / "trusted.pub")]
        rc, _, err = await join_cli(gw, node, data, *key)
        assert rc == 0, err
        releases = small_fs / "releases" if node == "pi-disk" else tmp_path / f"{node}-releases"
        agents.append(AgentProcess(data, releases))
        agents[-1].start()
    await start_job(gw, "up-bad", "9.9.9", list(boards), concurrency=3, failureTolerate="1")
    for node in boards:

        async def failed(node: str = node) -> dict[str, object]:
            st = await node_status_of(gw, "up-bad", node)
            return st if st.get("state") == "failed" else {}

        boards[node] = str((await wait_for(failed, timeout=30, what=node))["reason"])
    assert "signature does not verify" in boards["pi-sig"]
    assert "no release key" in boards["pi-nokey"]
    assert "not enough disk space" in boards["pi-disk"]
    for a in agents:
        assert a.downloads() == []
    gw.scope.cancel()
