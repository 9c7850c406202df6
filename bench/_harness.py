"""Start real gateway and agent processes for benchmarks (loopback, free ports)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PY = sys.executable


def service_env() -> dict[str, str]:
    """This process's environment plus what the board's systemd units set for the
    agent and the mappers (``firmware_tools._firstboot.SERVICE_ENVIRONMENT``:
    PYTHONOPTIMIZE=2, PYTHONNODEBUGRANGES=1), so that benches measure the processes
    users run. As on a board, the venv's ``.opt-2.pyc`` files should exist
    (``python -OO -m compileall -q VENV/lib``, as the first boot does)."""
    tools = str(Path(__file__).resolve().parent.parent / "firmware-tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    from firmware_tools._firstboot import SERVICE_ENVIRONMENT

    return {**os.environ, **SERVICE_ENVIRONMENT}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mosquitto(data_dir: Path) -> Iterator[int]:
    """A real broker from scripts/mosquitto on a free loopback port (yielded),
    stopped by its recorded PID on exit."""
    script = str(Path(__file__).resolve().parent.parent / "scripts" / "mosquitto")
    port = free_port()
    subprocess.run([script, "start", "--dir", str(data_dir), "--port", str(port)], check=True)
    try:
        yield port
    finally:
        subprocess.run([script, "stop", "--dir", str(data_dir)], check=True)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def machine() -> str:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores, {model}, Python {sys.version.split()[0]}"


class Gateway:
    def __init__(self, data_dir: Path, **extra: str) -> None:
        self.data_dir = data_dir
        self.ports = {"hub": free_port(), "join": free_port(), "api": free_port()}
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            PY,
            "-m",
            "cloudgateway._cli",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--hub",
            f"127.0.0.1:{self.ports['hub']}",
            "--join",
            f"127.0.0.1:{self.ports['join']}",
            "--api",
            f"127.0.0.1:{self.ports['api']}",
            "--log-level",
            "WARNING",
        ]
        for k, v in self.extra.items():
            args += [f"--{k}", v]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "gateway.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.ports['api']}/healthz", timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError((self.data_dir / "gateway.log").read_text()) from None
                time.sleep(0.1)
        raise RuntimeError("gateway did not start")

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['api']}{path}", data=data, method=method
        )
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())

    def join(self, node: str, data_dir: Path) -> None:
        token = subprocess.check_output(
            [
                PY,
                "-m",
                "cloudgateway._cli",
                "token",
                "create",
                "--data-dir",
                str(self.data_dir),
                "--node",
                node,
            ],
            text=True,
        ).strip()
        subprocess.check_call(
            [
                PY,
                "-m",
                "edgeagent._cli",
                "join",
                "--gateway",
                f"https://127.0.0.1:{self.ports['join']}",
                "--token",
                token,
                "--data-dir",
                str(data_dir),
            ],
            stdout=subprocess.DEVNULL,
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_agent(data_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    log = open(data_dir / "agent.log", "ab")
    return subprocess.Popen(
        [
            PY,
            "-m",
            "edgeagent._cli",
            "run",
            "--data-dir",
            str(data_dir),
            "--log-level",
            "WARNING",
            *extra,
        ],
        stdout=log,
        stderr=log,
        env=service_env(),
    )


def agent_status(data_dir: Path) -> dict[str, Any]:
    out = subprocess.check_output(
        [PY, "-m", "edgeagent._cli", "status", "--data-dir", str(data_dir), "-o", "json"]
    )
    return dict(json.loads(out))


def wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")
