"""kill -9 of a real agent process in the middle of a stream of updates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import apsw

from edgeagent._cli import agent_status
from tests.conftest import Gateway, join_node, wait_for
from tests.test_sync_e2e import NS, cm


def spawn_agent(data_dir: Path) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "edgeagent._cli",
        "run",
        "--data-dir",
        str(data_dir),
        "--heartbeat",
        "1",
    ]
    with open(data_dir / "agent.log", "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)


async def test_kill_9_mid_stream_loses_nothing(gateway: Gateway, tmp_path: Path) -> None:
    node, data = "crashy", tmp_path / "agent"
    await join_node(gateway, node, data)
    names = [f"c{i:02d}" for i in range(50)]
    for n in names:
        code, _ = await gateway.api("POST", f"{NS}/configmaps", cm(n, node, "0"))
        assert code == 201
    proc = spawn_agent(data)
    try:
        await wait_for(lambda: agent_status(data)["objects"].get("ConfigMap") == 50, timeout=20)
        store = gateway.store
        killed = False
        for i in range(1, 10_001):
            key = f"configmaps/default/{names[i % 50]}"
            rec = await store.get(key)
            value = dict(rec.value)
            value["data"] = {"k": str(i)}
            await store.update(key, value)
            if i == 4000 and not killed:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                killed = True
            if i == 6000:
                proc = spawn_agent(data)
        assert killed
        # Converged: the board holds the last value of every ConfigMap.
        expected = {
            f"configmaps/default/{n}": (await store.get(f"configmaps/default/{n}")).value["data"][
                "k"
            ]
            for n in names
        }

        def board() -> dict[str, str]:
            conn = apsw.Connection(str(data / "meta.db"))
            try:
                import edgeproto

                return {
                    k: edgeproto.decode_object(d)["data"]["k"]
                    for k, d in conn.execute(
                        "SELECT key, data FROM objects WHERE resource='configmaps'"
                    )
                }
            finally:
                conn.close()

        await wait_for(lambda: board() == expected, timeout=30, interval=0.2)
        conn = apsw.Connection(str(data / "meta.db"))
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()
        revs = [(await store.get(k)).mod_rev for k in expected]
        assert agent_status(data)["last_rev"] >= max(revs)
    finally:
        proc.kill()
        proc.wait()
