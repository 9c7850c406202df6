"""Gateway replicas as real processes (``cloudgateway serve --store etcd://...``),
for the tests that kill one with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for_sync


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    """One ``cloudgateway serve`` process on ``store`` with its own data dir."""

    def __init__(self, data_dir: Path, store: str, *, grace: str = "10s") -> None:
        self.data_dir = data_dir
        self.store = store
        self.grace = grace
        self.ports = {k: free_port() for k in ("hub", "join", "api", "peer")}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def join_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['join']}"

    @property
    def hub_url(self) -> str:
        return f"wss://127.0.0.1:{self.ports['hub']}/"

    def cli(self, *argv: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "cloudgateway._cli", *argv],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "cloudgateway._cli", "serve",
            "--store", self.store, "--data-dir", str(self.data_dir),
            "--hub", f"127.0.0.1:{self.ports['hub']}",
            "--join", f"127.0.0.1:{self.ports['join']}",
            "--api", f"127.0.0.1:{self.ports['api']}",
            "--peer", f"127.0.0.1:{self.ports['peer']}",
            "--advertise", "127.0.0.1", "--grace", self.grace, "--log-level", "INFO",
        ]  # fmt: skip
        log = open(self.data_dir / "gateway.log", "ab")  # handed to the child
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        log.close()

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(self.log())
            try:
                with urllib.request.urlopen(self.api_url + "/healthz", timeout=1):
                    return True
            except OSError:
                return False

        wait_for_sync(up, timeout=60, interval=0.05, what=f"replica {self.data_dir.name} serving")

    def log(self) -> str:
        try:
            return (self.data_dir / "gateway.log").read_text()[-4000:]
        except OSError:
            return ""

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 10,
        ctype: str = "application/json",
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def leader_of(replicas: list[Replica]) -> Replica | None:
    """The replica whose /metrics says it leads (gauge ``edgeflock_coord_leader`` 1)."""
    for r in replicas:
        if r.proc is None or r.proc.poll() is not None:
            continue
        req = urllib.request.Request(r.api_url + "/metrics")
        req.add_header("Authorization", f"Bearer {r.token}")
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            continue
        families = {f.name: f for f in text_string_to_metric_families(text)}
        leader = families.get("edgeflock_coord_leader")
        if leader is not None and leader.type == "gauge" and leader.samples[0].value == 1:
            return r
    return None


def wait_time(start: float) -> float:
    return time.monotonic() - start
