"""Streams the cloud opens on a node through its hub connection: a pod's logs and
a command run in one of its containers.

No port on the board is reached from outside and no iptables rule is needed
(KubeEdge's stream tunnel needs both): the request travels down the node's own
WebSocket, the output comes back up it in chunks. Flow control is a window of
unacknowledged chunks per stream, so a slow HTTP client slows the node's reader
instead of filling the gateway's memory.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from edgeproto import STREAM_WINDOW, Kind, Message

from ._errors import GatewayError

log = logging.getLogger(__name__)

__all__ = ["NodeStream", "PodStream", "StreamError", "result_error"]


class StreamError(GatewayError):
    """A stream could not be opened or ended in error; ``code`` is an HTTP status."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


Send = Callable[[Message], Awaitable[None]]


class PodStream(Protocol):
    """What the API reads a stream through: the hub's ``NodeStream``, or a
    stream another gateway replica relays (``_peer.PeerStream``)."""

    result: dict[str, Any]

    async def receive(self) -> tuple[int, bytes] | None: ...

    def error(self) -> StreamError | None: ...


def result_error(result: dict[str, Any]) -> StreamError | None:
    """The error a stream's final word (``{"error": {code, reason, message}}``) reports."""
    err = result.get("error")
    if not isinstance(err, dict):
        return None
    code = err.get("code")
    return StreamError(
        code if isinstance(code, int) and 400 <= code < 600 else 500,
        str(err.get("reason") or "InternalError"),
        str(err.get("message") or "stream failed"),
    )


class NodeStream:
    """The gateway's end of one stream. ``receive()`` gives ``(fd, bytes)`` chunks
    (fd 1 stdout, 2 stderr) and ``None`` at the end; ``result`` then holds the
    node's final word (``exit_code``, or ``error`` {code, message})."""

    def __init__(self, sid: int, send: Send) -> None:
        self.sid = sid
        self._send = send
        # One slot more than the window: a node that overruns it is cut off.
        self._tx, self._rx = trio.open_memory_channel[tuple[int, bytes]](STREAM_WINDOW + 1)
        self.result: dict[str, Any] = {}
        self.ended = False

    # ---- called by the hub's reader for this node --------------------------------

    def deliver(self, msg: Message) -> bool:
        """Queue a node message for the consumer; False if the node broke the protocol."""
        if self.ended:
            return True
        if msg.kind is Kind.STREAM_END:
            self.result = dict(msg.body)
            self._finish()
            return True
        fd, data = msg.body.get("fd", 1), msg.body.get("data")
        if fd not in (1, 2) or not isinstance(data, bytes):
            self.abort(502, "BadGateway", "the node sent a malformed stream chunk")
            return False
        try:
            self._tx.send_nowait((fd, data))
        except trio.WouldBlock:
            self.abort(502, "BadGateway", "the node overran the stream window")
            return False
        return True

    def abort(self, code: int, reason: str, message: str) -> None:
        if not self.ended:
            self.result = {"error": {"code": code, "reason": reason, "message": message}}
            self._finish()

    def _finish(self) -> None:
        self.ended = True
        self._tx.close()  # the consumer drains what is queued, then sees the end

    # ---- called by the consumer --------------------------------------------------

    async def receive(self) -> tuple[int, bytes] | None:
        try:
            item = await self._rx.receive()
        except trio.EndOfChannel:
            return None
        if not self.ended:
            try:
                await self._send(Message(Kind.STREAM_ACK, parent=self.sid, body={"n": 1}))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self.abort(502, "BadGateway", "the node's connection closed")
        return item

    def error(self) -> StreamError | None:
        return result_error(self.result)
