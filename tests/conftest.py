"""Shared fixtures: a real gateway (in this process, real sockets and TLS on
loopback, port 0) and real agents joined to it."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from cloudgateway import ctl
from cloudgateway._app import GatewayConfig, RunningGateway, run_gateway
from cloudgateway._http import HttpConfig
from cloudgateway._hub import HubConfig
from cloudgateway._join import create_join_token
from cloudgateway._pki import GatewayPki, sign_node_csr
from edgeagent._app import run_agent
from edgeagent._cli import agent_status
from edgeagent._config import AgentConfig, load_config
from edgeagent._join import join


def write_node_credentials(pki: GatewayPki, node: str, data_dir: Path) -> None:
    """node.key (Ed25519, as ``edgeagent join`` makes), node.crt signed by the
    gateway CA for ``node``, and ca.crt, in ``data_dir`` (created)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    key = ed25519.Ed25519PrivateKey.generate()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, None)
        .public_bytes(serialization.Encoding.PEM)
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "node.crt").write_bytes(sign_node_csr(pki, csr, node))
    (data_dir / "node.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (data_dir / "ca.crt").write_bytes(pki.ca_cert_pem)


@dataclass
class Gateway:
    data_dir: Path
    running: RunningGateway
    scope: trio.CancelScope
    token: str = ""
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def ports(self) -> dict[str, int]:
        return self.running.ports

    @property
    def store(self) -> Any:
        return self.running.store

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def join_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['join']}"

    def request(
        self, method: str, path: str, body: Any = None, ctype: str = "application/json"
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read() or b"null")

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await trio.to_thread.run_sync(self.request, method, path, body)

    async def stop(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()

    async def edgectl(self, *argv: str) -> tuple[int, str, str]:
        """``edgectl`` against this gateway's API with its admin token."""
        return await edgectl("--server", self.api_url, "--token", self.token, *argv)


async def edgectl(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    """Run ``edgectl`` in a worker thread: (exit code, stdout, stderr)."""

    def run() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        rc = ctl.main(list(argv), stdout=out, stderr=err, stdin=io.StringIO(stdin))
        return rc, out.getvalue(), err.getvalue()

    with trio.fail_after(20):
        return await trio.to_thread.run_sync(run)


def gateway_config(data_dir: Path, ports: dict[str, int] | None = None, **kw: Any) -> GatewayConfig:
    ports = ports or {"hub": 0, "join": 0, "api": 0}
    hub = kw.pop("hub", HubConfig(idle_timeout=10.0, progress_interval=300.0))
    return GatewayConfig(
        data_dir=data_dir,
        hub=dataclasses.replace(hub, host="127.0.0.1", port=ports["hub"]),
        join=HttpConfig(host="127.0.0.1", port=ports["join"], max_body=64 * 1024),
        api=HttpConfig(host="127.0.0.1", port=ports["api"]),
        **kw,
    )


async def start_gateway(
    nursery: trio.Nursery, data_dir: Path, ports: dict[str, int] | None = None, **kw: Any
) -> Gateway:
    config = gateway_config(data_dir, ports, **kw)
    scope = trio.CancelScope()
    stopped = trio.Event()

    async def runner(task_status: trio.TaskStatus[RunningGateway]) -> None:
        try:
            with scope:
                await run_gateway(config, task_status=task_status)
        finally:
            stopped.set()

    got = await nursery.start(runner)
    gw = Gateway(data_dir, got, scope, stopped=stopped)
    gw.token = (data_dir / "admin.token").read_text().strip()
    return gw


@pytest.fixture
async def gateway(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = await start_gateway(nursery, tmp_path / "gateway")
    yield gw
    gw.scope.cancel()


@dataclass
class Agent:
    config: AgentConfig
    scope: trio.CancelScope
    stopped: trio.Event

    def status(self) -> dict[str, Any]:
        return agent_status(self.config.data_dir)

    async def stop(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()


async def join_node(gw: Gateway, node: str, data_dir: Path) -> None:
    token = await create_join_token(gw.data_dir, node, 600.0)
    await trio.to_thread.run_sync(join, gw.join_url, token, data_dir)


async def start_agent(nursery: trio.Nursery, data_dir: Path, **overrides: Any) -> Agent:
    overrides.setdefault("heartbeat", 1.0)
    overrides.setdefault("backoff_base", 0.05)
    overrides.setdefault("backoff_cap", 0.5)
    overrides.setdefault("status_interval", 5.0)
    pod_streams = overrides.pop("pod_streams", None)
    config = load_config(data_dir, **overrides)
    scope = trio.CancelScope()
    stopped = trio.Event()

    async def runner() -> None:
        try:
            with scope:
                await run_agent(config, pod_streams=pod_streams)
        finally:
            stopped.set()

    nursery.start_soon(runner)
    return Agent(config, scope, stopped)


def _describe(pred: Callable[[], Any], what: str | Callable[[], str] | None) -> str:
    """What a waited-for condition is, for the failure message: ``what`` (or
    what it returns, when the failure happens), else the predicate's source
    line (lambdas) or its name."""
    if callable(what):
        return what()
    if what:
        return what
    name = getattr(pred, "__qualname__", "")
    if name and "<lambda>" not in name:
        return name
    try:
        return inspect.getsource(pred).strip()
    except (OSError, TypeError):
        return repr(pred)


def agent_rows(data_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Rows of a query on an agent's ``meta.db``, read-only, while the agent may be
    running (its write lock is waited for, not an error)."""
    import apsw

    conn = apsw.Connection(str(data_dir / "meta.db"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.setbusytimeout(10_000)
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def wait_for(
    pred: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    *,
    what: str | Callable[[], str] | None = None,
) -> Any:
    """Poll ``pred`` (sync or async) until truthy and return its value; after
    ``timeout`` fail naming the condition and its last value. The one place
    tests wait on a condition that has no event to wait on (in trio time: under
    ``autojump_clock`` the timeout is virtual too)."""
    last: Any = None
    with trio.move_on_after(timeout):
        while True:
            last = pred()
            if inspect.isawaitable(last):
                last = await last
            if last:
                return last
            await trio.sleep(interval)
    raise AssertionError(
        f"not true within {timeout} s: {_describe(pred, what)} (last value {last!r})"
    )


def wait_for_sync(
    pred: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.01,
    *,
    what: str | Callable[[], str] | None = None,
) -> Any:
    """``wait_for`` for blocking code (fixtures outside trio, worker threads)."""
    deadline = time.monotonic() + timeout
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not true within {timeout} s: {_describe(pred, what)} (last value {last!r})"
            )
        time.sleep(interval)


class ManualClock:
    """A clock the test moves by hand (``now`` seconds), for the components that
    take one (``TokenStore``, ``NodeHealth``): time passes without waiting."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.contextmanager
def tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (``4m``) mounted at ``mnt`` (created) for the
    block (the tests run as root), to fill up for ENOSPC; unmounted afterwards."""
    import subprocess

    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs."""
    with tmpfs(tmp_path / "small", "4m") as mnt:
        yield mnt


def fill_up(directory: Path) -> Path:
    """Write a file in ``directory`` until the filesystem is full; returns it
    (delete it to free the space)."""
    import errno
    import os

    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = b"\0" * 65536
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return filler
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)


# ---- etcd -----------------------------------------------------------------------------

ETCD_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "etcd"


class EtcdCluster:
    """A real etcd cluster started by ``scripts/etcd`` in ``dir`` (loopback, free
    ports); ``kill``/``restart`` a member for fault tests; ``stop`` stops all."""

    def __init__(self, directory: Path, members: int = 1, *, tls: bool = False) -> None:
        self.dir = directory
        self.members = members
        subprocess.run(
            [sys.executable, str(ETCD_SCRIPT), "start", "--dir", str(directory),
             "--members", str(members), *(["--tls"] if tls else [])],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        self.endpoints = (directory / "endpoints").read_text().strip().split(",")

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(self.endpoints)

    def _run(self, *argv: str) -> str:
        out = subprocess.run(
            [sys.executable, str(ETCD_SCRIPT), *argv, "--dir", str(self.dir)],
            check=True, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        return out.stdout.strip()

    def kill(self, member: int) -> None:
        self._run("kill", "--member", str(member))

    def restart(self, member: int) -> None:
        self._run("restart", "--member", str(member))

    def leader(self) -> int:
        return int(self._run("leader"))

    def stop(self, *, grace: float = 10.0) -> None:
        self._run("stop", "--grace", str(grace))


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A fresh one-member etcd for this test."""
    cluster = EtcdCluster(tmp_path / "etcd")
    try:
        yield cluster
    finally:
        cluster.stop(grace=2)  # a throwaway cluster: no need to wait for a leader hand-over


@pytest.fixture
def etcd_tls(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A fresh one-member etcd that takes only TLS clients with a client
    certificate (its CA and a client certificate in ``dir / "tls"``)."""
    cluster = EtcdCluster(tmp_path / "etcd-tls", tls=True)
    try:
        yield cluster
    finally:
        cluster.stop(grace=2)  # a throwaway cluster: no need to wait for a leader hand-over


@pytest.fixture
def etcd3(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A fresh three-member etcd cluster for this test."""
    cluster = EtcdCluster(tmp_path / "etcd3", members=3)
    try:
        yield cluster
    finally:
        cluster.stop(grace=2)  # a throwaway cluster: no need to wait for a leader hand-over
