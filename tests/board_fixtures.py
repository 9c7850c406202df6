"""An emulated board for the tests and the bench: a Pi OS-like arm64 image built from
Debian's packages (scripts/board-image), the offline bundle for it (edgeflash bundle),
a gateway on the host as its own process, and the board booted under QEMU
(scripts/board), reached from inside through QEMU's guest agent."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import wait_for_sync

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
BIN = Path(sys.executable).parent
# The host as the board sees it: QEMU's user network maps 10.0.2.2 to the host's loopback.
BOARD_HOST = "10.0.2.2"
BOARD_AGENT_DATA = "/var/lib/edgeflock/agent"
BOARD_VENV = "/opt/edgeflock/current"  # the current release's venv (the launcher execs its agent)
BOARD_CRI = "/run/edgeflock/containerd/containerd.sock"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(argv: list[str | Path], *, timeout: float = 120, **kw: Any) -> str:
    """Run a command; its stdout, or an AssertionError carrying what it printed."""
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout


def wait_until(check: Any, *, timeout: float, interval: float = 2.0, what: str) -> Any:
    """Poll ``check`` until it returns something truthy (the tests' own
    ``wait_for_sync``, with a pace that suits an emulated board); that value."""
    return wait_for_sync(check, timeout, interval, what=what)


@dataclass
class BoardInputs:
    base: Path  # base-aarch64.img, as scripts/board-image wrote it
    bundle: Path  # edgeflash bundle output, with the board's busybox and pause images


def board_inputs(work: Path, arch: str = "aarch64") -> BoardInputs:
    """The base image (built once, then cached under /var/cache/edgeflock) and the
    offline bundle with OCI images made from the board's own busybox and catatonit."""
    run(["bash", SCRIPTS / "board-image", "--arch", arch, "--output", work], timeout=3600)
    oci_arch = {"aarch64": "arm64", "armv7l": "arm"}[arch]
    images = work / "images"
    run(
        ["bash", SCRIPTS / "containerd", "build-images", images,
         "--from", work / f"bin-{arch}", "--arch", oci_arch],
    )  # fmt: skip
    bundle = work / "bundle"
    if bundle.exists():
        shutil.rmtree(bundle)
    run(
        [BIN / "edgeflash", "bundle", "--arch", arch, "--output", bundle,
         "--oci-image", images / "busybox.tar", "--sandbox-image", images / "pause.tar"],
        timeout=600,
    )  # fmt: skip
    return BoardInputs(work / f"base-{arch}.img", bundle)


class HostGateway:
    """``cloudgateway serve`` on the host's loopback, with the address the board
    reaches it by in its certificate."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ports = {k: free_port() for k in ("hub", "join", "api")}
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def board_join_url(self) -> str:
        return f"https://{BOARD_HOST}:{self.ports['join']}"

    def cli(self, *argv: str) -> str:
        return run([BIN / "cloudgateway", *argv], timeout=60)

    def join_token(self, node: str, ttl: str = "1h") -> str:
        out = self.cli("token", "create", "--data-dir", str(self.data_dir), "--node", node,
                       "--ttl", ttl)  # fmt: skip
        return out.strip().splitlines()[-1].strip()

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            BIN / "cloudgateway", "serve", "--data-dir", self.data_dir,
            "--hub", f"127.0.0.1:{self.ports['hub']}",
            "--join", f"127.0.0.1:{self.ports['join']}",
            "--api", f"127.0.0.1:{self.ports['api']}",
            "--san", BOARD_HOST, "--grace", "60s",
        ]  # fmt: skip
        with open(self.data_dir / "gateway.log", "ab") as log:
            self.proc = subprocess.Popen(
                [str(a) for a in argv], stdout=log, stderr=log, start_new_session=True
            )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError((self.data_dir / "gateway.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(self.api_url + "/healthz", timeout=1):
                    return True
            except OSError:
                return False

        wait_until(up, timeout=60, interval=0.1, what="the gateway serving")
        self.token = (self.data_dir / "admin.token").read_text().strip()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read() or b"null")

    def edgectl(self, *argv: str, timeout: float = 120) -> str:
        return run(
            [BIN / "edgectl", "--server", self.api_url, "--token", self.token, *argv],
            timeout=timeout,
        )

    def try_edgectl(self, *argv: str, timeout: float = 120) -> tuple[int, str]:
        """(exit code, stdout + stderr): for polling until a command succeeds."""
        proc = subprocess.run(
            [str(BIN / "edgectl"), "--server", self.api_url, "--token", self.token, *argv],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        return proc.returncode, proc.stdout + proc.stderr

    def node_ready(self, node: str) -> dict[str, Any] | None:
        code, body = self.api("GET", f"/api/v1/nodes/{node}")
        if code != 200:
            return None
        conds = {c["type"]: c["status"] for c in body.get("status", {}).get("conditions", [])}
        return body if conds.get("Ready") == "True" else None


def bake(
    inputs: BoardInputs, work: Path, gateway: HostGateway, node: str, token: str, *extra: str
) -> Path:
    """``edgeflash prepare`` then ``edgeflash write`` onto a file standing in for the
    SD card, as a user does: the card's path."""
    prepared = work / f"{node}.img"
    sd = work / f"{node}-sd.img"
    run(
        [BIN / "edgeflash", "prepare", "--image", inputs.base, "--output", prepared,
         "--gateway", gateway.board_join_url, "--token", token, "--node", node,
         "--bundle", inputs.bundle, "--mapper", "modbus", *extra],
        timeout=300,
    )  # fmt: skip
    run([BIN / "edgeflash", "write", "--image", prepared, "--device", sd, "--yes"], timeout=300)
    prepared.unlink()
    return sd


class Board:
    """One emulated board: ``scripts/board`` on an image file (the stand-in SD card)."""

    def __init__(self, image: Path, d: Path, arch: str = "aarch64") -> None:
        self.image = image
        self.dir = d
        self.arch = arch

    def _script(self, *argv: str | Path, timeout: float = 120) -> str:
        return run([SCRIPTS / "board", *argv], timeout=timeout)

    def start(self) -> None:
        self._script("start", "--image", self.image, "--dir", self.dir, "--arch", self.arch)

    def kill(self) -> None:
        """The plug pulled: QEMU killed, nothing flushed inside the board."""
        self._script("kill", "--dir", self.dir)

    def stop(self) -> None:
        self._script("stop", "--dir", self.dir, "--timeout", "120", timeout=180)

    def running(self) -> bool:
        try:
            pid = int((self.dir / "qemu.pid").read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return False
        return True

    def console(self) -> str:
        try:
            return (self.dir / "console.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, pattern: str, *, timeout: float, since: int = 0) -> re.Match[str]:
        rx = re.compile(pattern)

        def seen() -> re.Match[str] | None:
            if not self.running():
                raise AssertionError(f"the board stopped:\n{self.console()[-3000:]}")
            return rx.search(self.console(), since)

        return wait_until(seen, timeout=timeout, interval=1, what=f"console: {pattern}")  # type: ignore[no-any-return]

    def exec(self, *argv: str, timeout: float = 120, check: bool = True) -> tuple[int, str, str]:
        proc = subprocess.run(
            [str(SCRIPTS / "board"), "exec", "--dir", str(self.dir), "--timeout", str(timeout),
             "--", *argv],
            capture_output=True, text=True, timeout=timeout + 30,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"on the board: {argv} exited {proc.returncode}: {proc.stderr}")
        return proc.returncode, proc.stdout, proc.stderr

    def wait_up(self, timeout: float = 900) -> None:
        self._script("wait", "--dir", self.dir, "--timeout", str(timeout), timeout=timeout + 30)

    def agent_status(self) -> dict[str, Any] | None:
        code, out, _ = self.exec(
            f"{BOARD_VENV}/bin/edgeagent", "status", "--data-dir", BOARD_AGENT_DATA,
            "-o", "json", check=False, timeout=120,
        )  # fmt: skip
        if code != 0:
            return None
        try:
            value = json.loads(out)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def pids(self, pattern: str) -> list[int]:
        """PIDs on the board whose command line matches ``pattern`` (pgrep -f)."""
        code, out, _ = self.exec("pgrep", "-f", pattern, check=False)
        return [int(p) for p in out.split()] if code == 0 else []

    def rss_kib(self, pid: int) -> int:
        _, out, _ = self.exec("cat", f"/proc/{pid}/status")
        m = re.search(r"^VmRSS:\s+(\d+) kB", out, re.MULTILINE)
        assert m is not None, out
        return int(m.group(1))
