"""A small CRI client: unary gRPC over HTTP/2 on containerd's unix socket, in trio.

grpcio costs ~15 MB of resident memory and 7 threads per channel, more than the
rest of the agent's budget for edged, and all edged needs from it is unary calls
on a local socket. So this is the default transport: HTTP/2 from the sans-io
``h2`` library (``_h2conn``), gRPC's message framing and status from
``_grpcwire``, one request per connection at a time and a small pool of
connections (the ``CapacityLimiter`` bounds it), each call under its deadline.
Messages are encoded with protobuf from ``_cri_api_pb2`` (the runtime.v1 subset
edged uses). A dropped connection is reopened on the next call, so containerd
restarts are survived.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import trio

from . import _cri_api_pb2
from ._errors import CriError
from ._grpcwire import code_name
from ._h2conn import H2Conn, Lost

log = logging.getLogger(__name__)

__all__ = ["Cri", "CriClient", "CriClientBase", "pb"]

pb: Any = _cri_api_pb2

_RESPONSES = {
    "Version": "VersionResponse",
    "RunPodSandbox": "RunPodSandboxResponse",
    "StopPodSandbox": "StopPodSandboxResponse",
    "RemovePodSandbox": "RemovePodSandboxResponse",
    "PodSandboxStatus": "PodSandboxStatusResponse",
    "ListPodSandbox": "ListPodSandboxResponse",
    "CreateContainer": "CreateContainerResponse",
    "StartContainer": "StartContainerResponse",
    "StopContainer": "StopContainerResponse",
    "RemoveContainer": "RemoveContainerResponse",
    "ListContainers": "ListContainersResponse",
    "ContainerStatus": "ContainerStatusResponse",
    "ExecSync": "ExecSyncResponse",
    "ListContainerStats": "ListContainerStatsResponse",
    "ImageStatus": "ImageStatusResponse",
    "PullImage": "PullImageResponse",
}
_IMAGE_METHODS = {"ImageStatus", "PullImage"}
_SLOW = ("PullImage", "StopContainer", "StopPodSandbox", "ExecSync")


class Cri(Protocol):
    """What edged needs of a CRI client (this module's, or ``_grpc``'s on grpcio)."""

    async def call(self, method: str, request: Any, rpc_timeout: float | None = None) -> Any: ...

    def close(self) -> None: ...


class CriClientBase:
    """What both transports share: the unix socket address, the timeout, and the
    concurrency limits (calls that may take long, a pull, a stop waiting out a
    grace period, an exec, have limits of their own, so they never starve
    relisting and status calls)."""

    def __init__(self, address: str, *, concurrency: int = 4, timeout: float = 60.0) -> None:
        self.address = address if "://" in address else f"unix://{address}"
        if not self.address.startswith("unix://"):
            raise CriError("connect", "INVALID_ARGUMENT", f"{address}: only unix:// sockets")
        self.timeout = timeout
        self._limiter = trio.CapacityLimiter(concurrency)
        self._slow = {m: trio.CapacityLimiter(concurrency) for m in _SLOW}

    def statistics(self) -> trio.CapacityLimiterStatistics:
        return self._limiter.statistics()

    def _limit(self, method: str) -> trio.CapacityLimiter:
        return self._slow.get(method, self._limiter)

    @staticmethod
    def _path(method: str) -> str:
        service = "ImageService" if method in _IMAGE_METHODS else "RuntimeService"
        return f"/runtime.v1.{service}/{method}"


class CriClient(CriClientBase):
    """``await cri.call("RunPodSandbox", pb.RunPodSandboxRequest(...))``."""

    def __init__(self, address: str, *, concurrency: int = 4, timeout: float = 60.0) -> None:
        super().__init__(address, concurrency=concurrency, timeout=timeout)
        self.path = self.address.removeprefix("unix://")
        self._idle: list[H2Conn] = []  # one request per connection at a time

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def call(self, method: str, request: Any, rpc_timeout: float | None = None) -> Any:
        path = self._path(method)
        timeout = rpc_timeout or self.timeout
        body = request.SerializeToString()
        async with self._limit(method):
            for attempt in (0, 1):
                reused = bool(self._idle)
                try:
                    conn = self._idle.pop() if reused else await H2Conn.open(self.path)
                except OSError as exc:
                    raise CriError(method, "UNAVAILABLE", f"connect {self.path}: {exc}") from None
                ok = False
                try:
                    with trio.move_on_after(timeout) as scope:
                        status, message, raw = await conn.unary(path, body, timeout)
                    if scope.cancelled_caught:
                        raise CriError(method, "DEADLINE_EXCEEDED", f"no answer in {timeout:g} s")
                    ok = True
                except Lost as exc:
                    # A pooled connection may have died while idle (containerd restarted):
                    # try once more on a fresh one.
                    if reused and attempt == 0:
                        continue
                    raise CriError(method, "UNAVAILABLE", str(exc)) from None
                finally:
                    if ok and not conn.going_away:
                        self._idle.append(conn)
                    else:
                        conn.close()
                if status != 0:
                    raise CriError(method, code_name(status), message)
                return getattr(pb, _RESPONSES[method]).FromString(raw)
        raise AssertionError("unreachable")
