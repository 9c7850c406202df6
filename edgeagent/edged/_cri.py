"""What edged's two CRI transports share: the ``Cri`` interface edged calls
(``await cri.call("RunPodSandbox", pb.RunPodSandboxRequest(...))``), the messages
(``pb``: protobuf classes of the runtime.v1 subset edged uses, made at import from
``_cri_api_desc`` by ``edgeio.protomsg``), the
method → response table, and ``CriClientBase`` (the unix socket address, the
timeout, the concurrency limits).

The transports: ``_h2.CriClient`` (the default: unary gRPC over the sans-io h2
library, ~15 MB leaner than grpcio) and ``_grpc.GrpcCriClient``
(``cri_transport = "grpcio"``). Neither is imported here, so each loads only its
own HTTP/2 stack.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import trio

from edgeio.protomsg import messages

from ._cri_api_desc import SERIALIZED
from ._errors import CriError

log = logging.getLogger(__name__)

__all__ = ["Cri", "CriClientBase", "pb"]

pb: Any = messages(SERIALIZED)

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
