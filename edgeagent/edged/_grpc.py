"""The CRI client on grpcio (``cri_transport = "grpcio"``): blocking unary calls
run in trio worker threads, bounded by a ``CapacityLimiter`` per class of call.

Same face as ``_h2.CriClient`` (``await call(method, request)``, ``close``,
``statistics``), same messages (``_cri.pb``), same errors
(``CriError`` with the gRPC status name). grpc is imported when this client is
made, i.e. only when edged runs on this transport. The default is the lean client
in ``_h2.py`` (~15 MB less resident memory, see BENCHMARKS.md).
"""

from __future__ import annotations

import functools
from typing import Any

import trio

from ._cri import _RESPONSES, CriClientBase, pb
from ._errors import CriError

__all__ = ["GrpcCriClient"]


class GrpcCriClient(CriClientBase):
    def __init__(self, address: str, *, concurrency: int = 4, timeout: float = 60.0) -> None:
        super().__init__(address, concurrency=concurrency, timeout=timeout)
        import grpc

        self._grpc: Any = grpc
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
        self._stubs: dict[str, Any] = {}

    def close(self) -> None:
        self._channel.close()

    def _stub(self, method: str) -> Any:
        stub = self._stubs.get(method)
        if stub is None:
            stub = self._channel.unary_unary(
                self._path(method),
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
        async with self._limit(method):
            try:
                return await trio.to_thread.run_sync(
                    functools.partial(stub, request, timeout=timeout), abandon_on_cancel=True
                )
            except self._grpc.RpcError as exc:
                code = exc.code()
                name = code.name if code is not None else "UNKNOWN"
                raise CriError(method, name, exc.details() or "") from None
