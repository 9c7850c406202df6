"""The node's end of the streams the cloud opens through the hub connection:
pod logs and exec (see ``cloudgateway/_streams.py`` for the gateway's end).

The node checks that the pod is in its own store and bound to it, answers at
once (an empty chunk for "accepted", or ``stream-end`` with an error), then
sends output in chunks of at most ``STREAM_CHUNK`` bytes, never more than the window
the gateway has acknowledged. The gateway ending a stream cancels its task.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import trio

import edgeproto
from edgeproto import STREAM_CHUNK, STREAM_WINDOW, Kind, Message, ProtocolError

from ._meta import Meta

log = logging.getLogger(__name__)

__all__ = ["PodStreams", "StreamFailure", "StreamServer"]
MAX_STREAMS = 8  # concurrent streams per connection; more are refused (429)
EARLY_ERROR_SECONDS = 0.5  # a log reader failing this fast fails the request itself


class StreamFailure(Exception):
    """A stream request the node refuses; ``code`` is an HTTP status."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class PodStreams(Protocol):
    """What edged offers the cloud (``edgeagent.edged.Edged``)."""

    def read_logs(
        self, namespace: str, pod: str, container: str | None, tail: int | None, follow: bool
    ) -> AsyncIterator[bytes]: ...

    # ``timeout`` is CRI ExecSync's own: the runtime kills the command when it expires.
    async def exec_sync(
        self,
        namespace: str,
        pod: str,
        container: str | None,
        cmd: list[str],
        timeout: float,  # noqa: ASYNC109
    ) -> tuple[int, bytes, bytes]: ...


def _failure(exc: BaseException) -> StreamFailure:
    if isinstance(exc, StreamFailure):
        return exc
    code = getattr(exc, "http_code", None)
    if isinstance(code, int):
        return StreamFailure(code, str(getattr(exc, "reason", "BadRequest")), str(exc))
    if isinstance(exc, LookupError):
        return StreamFailure(404, "NotFound", str(exc) or "not found")
    return StreamFailure(500, "InternalError", f"{type(exc).__name__}: {exc}")


class _Stream:
    __slots__ = ("credit", "more", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.credit = STREAM_WINDOW
        self.more = trio.Event()


Send = Callable[[Message], Awaitable[None]]


class StreamServer:
    """Streams of one hub connection; its tasks live in that connection's nursery."""

    def __init__(
        self,
        node: str,
        meta: Meta,
        backend: PodStreams | None,
        send: Send,
        nursery: trio.Nursery,
    ) -> None:
        self._node = node
        self._meta = meta
        self._backend = backend
        self._send = send
        self._nursery = nursery
        self._streams: dict[int, _Stream] = {}
        self.counters: dict[str, int] = {"opened": 0, "refused": 0, "failed": 0}

    def handle(self, msg: Message) -> None:
        if msg.kind is Kind.STREAM_OPEN:
            if msg.id in self._streams:
                return  # a duplicate open: the first one stands
            stream = _Stream()
            self._streams[msg.id] = stream
            self._nursery.start_soon(self._serve, msg, stream)
            return
        st = self._streams.get(msg.parent or 0)
        if st is None:
            return
        if msg.kind is Kind.STREAM_ACK:
            n = msg.body.get("n", 1)
            st.credit += n if isinstance(n, int) and 0 < n <= STREAM_WINDOW else 1
            st.more.set()
            st.more = trio.Event()
        elif msg.kind is Kind.STREAM_END:
            st.scope.cancel()

    async def _serve(self, msg: Message, st: _Stream) -> None:
        sid = msg.id
        try:
            with st.scope:
                try:
                    if len(self._streams) > MAX_STREAMS:
                        raise StreamFailure(429, "TooManyRequests", "too many streams open")
                    ns, name = await self._check_pod(msg.res or "")
                    if self._backend is None:
                        raise StreamFailure(
                            501,
                            "NotImplemented",
                            f"node {self._node} runs no pods (start the agent with --cri)",
                        )
                    self.counters["opened"] += 1
                    params = dict(msg.body)
                    if msg.op == "logs":
                        await self._logs(sid, st, self._backend, ns, name, params)
                    elif msg.op == "exec":
                        await self._exec(sid, st, self._backend, ns, name, params)
                    else:
                        raise StreamFailure(400, "BadRequest", f"unknown stream op {msg.op!r}")
                except Exception as exc:
                    failure = _failure(exc)
                    key = "refused" if failure.code < 500 else "failed"
                    self.counters[key] += 1
                    if failure.code >= 500:
                        log.warning("stream %s on %s failed: %s", msg.op, msg.res, exc)
                    error = {
                        "code": failure.code,
                        "reason": failure.reason,
                        "message": str(failure),
                    }
                    await self._send(Message(Kind.STREAM_END, parent=sid, body={"error": error}))
        finally:
            self._streams.pop(sid, None)

    async def _check_pod(self, key: str) -> tuple[str, str]:
        try:
            resource, ns, name = edgeproto.split_key(key)
        except ProtocolError:
            resource, ns, name = "", "", ""
        if resource != "pods" or not ns:
            raise StreamFailure(400, "BadRequest", f"streams are about pods, not {key!r}")
        pod = await self._meta.get(key)
        if pod is None or (pod.get("spec") or {}).get("nodeName") != self._node:
            raise StreamFailure(404, "NotFound", f'pod "{name}" is not on node {self._node}')
        return ns, name

    async def _data(self, sid: int, st: _Stream, fd: int, data: bytes) -> None:
        for i in range(0, max(1, len(data)), STREAM_CHUNK):
            while st.credit <= 0:
                await st.more.wait()
            st.credit -= 1
            piece = data[i : i + STREAM_CHUNK]
            await self._send(Message(Kind.STREAM_DATA, parent=sid, body={"fd": fd, "data": piece}))

    async def _logs(
        self,
        sid: int,
        st: _Stream,
        backend: PodStreams,
        ns: str,
        name: str,
        params: dict[str, Any],
    ) -> None:
        container = params.get("container")
        tail = params.get("tail")
        follow = params.get("follow") is True
        chunks = backend.read_logs(
            ns,
            name,
            container if isinstance(container, str) else None,
            tail if isinstance(tail, int) and tail >= 0 else None,
            follow,
        )
        # The reader runs in its own task so that an error it raises at once
        # becomes the answer to the request, while a quiet followed log still
        # gets an "accepted" without waiting for output.
        tx, rx = trio.open_memory_channel[bytes | BaseException](1)

        async def pump() -> None:
            async with tx:
                try:
                    async for chunk in chunks:
                        await tx.send(chunk)
                except Exception as exc:
                    await tx.send(exc)
                finally:
                    aclose = getattr(chunks, "aclose", None)
                    if aclose is not None:
                        await aclose()

        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            first: bytes | BaseException | None = None
            ended = False
            with trio.move_on_after(EARLY_ERROR_SECONDS):
                try:
                    first = await rx.receive()
                except trio.EndOfChannel:
                    ended = True
            if isinstance(first, BaseException):
                failure = first
            else:
                await self._data(sid, st, 1, b"")  # accepted
                if first:
                    await self._data(sid, st, 1, first)
                if not ended:
                    async for item in rx:
                        if isinstance(item, BaseException):
                            failure = item
                            break
                        await self._data(sid, st, 1, item)
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        await self._send(Message(Kind.STREAM_END, parent=sid, body={}))

    async def _exec(
        self,
        sid: int,
        st: _Stream,
        backend: PodStreams,
        ns: str,
        name: str,
        params: dict[str, Any],
    ) -> None:
        container = params.get("container")
        cmd = params.get("command")
        timeout = params.get("timeout", 60)
        if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
            raise StreamFailure(400, "BadRequest", "command must be a non-empty list of strings")
        if not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout <= 0:
            raise StreamFailure(400, "BadRequest", "timeout must be a positive number")
        await self._data(sid, st, 1, b"")  # accepted: the command may take a while
        code, out, err = await backend.exec_sync(
            ns, name, container if isinstance(container, str) else None, cmd, float(timeout)
        )
        if out:
            await self._data(sid, st, 1, out)
        if err:
            await self._data(sid, st, 2, err)
        await self._send(Message(Kind.STREAM_END, parent=sid, body={"exit_code": code}))
