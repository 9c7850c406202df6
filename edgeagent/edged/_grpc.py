"""The CRI client on grpcio (the default transport): blocking unary calls run in
trio worker threads, bounded by a ``CapacityLimiter`` per class of call.

Same face as ``_cri.CriClient`` (``await call(method, request)``, ``close``,
``statistics``, ``calls``), same messages (``_cri_api_pb2``), same errors
(``CriError`` with the gRPC status name). grpc is imported when this client is
made, i.e. only when edged runs. ``cri_transport = "h2"`` in agent.toml selects
the lean client in ``_cri.py`` instead (~15 MB less resident memory, see
BENCHMARKS.md).
"""

from __future__ import annotations

import functools
from typing import Any

import trio

from ._cri import _IMAGE_METHODS, _RESPONSES, _SLOW, pb
from ._errors import CriError

__all__ = ["GrpcCriClient"]


class GrpcCriClient:
    def __init__(self, address: str, *, concurrency: int = 4, timeout: float = 60.0) -> None:
        import grpc

        self._grpc: Any = grpc
        self.address = address if "://" in address else f"unix://{address}"
        if not self.address.startswith("unix://"):
            raise CriError("connect", "INVALID_ARGUMENT", f"{address}: only unix:// sockets")
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            self.address,
            options=[
                ("grpc.max_receive_message_length", 16 << 20),
                # containerd restarting must not leave edged in a long reconnect backoff.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        self._limiter = trio.CapacityLimiter(concurrency)
        # As in _cri: slow calls never starve relisting and status calls.
        self._slow = {m: trio.CapacityLimiter(concurrency) for m in _SLOW}
        self._stubs: dict[str, Any] = {}
        self.calls = 0

    def close(self) -> None:
        self._channel.close()

    def statistics(self) -> trio.CapacityLimiterStatistics:
        return self._limiter.statistics()

    def _stub(self, method: str) -> Any:
        stub = self._stubs.get(method)
        if stub is None:
            service = "ImageService" if method in _IMAGE_METHODS else "RuntimeService"
            stub = self._channel.unary_unary(
                f"/runtime.v1.{service}/{method}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=getattr(pb, _RESPONSES[method]).FromString,
            )
            self._stubs[method] = stub
        return stub

    async def call(self, method: str, request: Any, rpc_timeout: float | None = None) -> Any:
        if method not in _RESPONSES:
            raise CriError(method, "UNIMPLEMENTED", "not a CRI call edged knows")
        stub = self._stub(method)
        timeout = rpc_timeout or self.timeout
        async with self._slow.get(method, self._limiter):
            self.calls += 1
            try:
                return await trio.to_thread.run_sync(
                    functools.partial(stub, request, timeout=timeout), abandon_on_cancel=True
                )
            except self._grpc.RpcError as exc:
                code = exc.code()
                name = code.name if code is not None else "UNKNOWN"
                raise CriError(method, name, exc.details() or "") from None
