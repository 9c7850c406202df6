"""The API's ``pods/NAME/log`` and ``pods/NAME/exec`` subresources, served by
opening a stream on the pod's node through the hub.

``GET .../pods/P/log?container=C&tailLines=N&follow=true&limitBytes=B`` answers
``text/plain`` (chunked while following), like Kubernetes'.
``POST .../pods/P/exec?container=C&command=sh&command=-c&command=...``
(or a JSON body ``{"command": [...], "container": C, "timeoutSeconds": T}``)
runs the command without a terminal and answers
``{"kind": "ExecResult", "exitCode": N, "stdout": B64, "stderr": B64}``.
``GET .../exec?command=...&stdout=true&stderr=true`` with a WebSocket upgrade
(subprotocol ``v5.channel.k8s.io`` or ``v4.channel.k8s.io``) is what kubectl
1.30+ sends: output streams as channel-tagged messages and a ``Status`` on the
error channel ends it, as the kubelet does. No stdin, no terminal (``-i``/``-t``
are refused with a clear message); Kubernetes' older SPDY upgrade is not offered.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

import trio
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping

from ._http import Request, Response, json_response
from ._streams import PodStream, StreamError

__all__ = ["MAX_EXEC_OUTPUT", "StreamOpener", "exec_in_pod", "exec_websocket", "pod_logs"]

MAX_EXEC_OUTPUT = 8 * 1024 * 1024  # per stream; beyond it the output is cut, and says so
MAX_EXEC_SECONDS = 600
OPEN_TIMEOUT = 15.0  # the node answers a stream-open at once (data or an error)


class StreamOpener(Protocol):
    def open_stream(
        self, node: str, key: str, op: str, params: dict[str, Any]
    ) -> contextlib.AbstractAsyncContextManager[PodStream]: ...


class BadParam(StreamError):
    def __init__(self, message: str) -> None:
        super().__init__(400, "BadRequest", message)


def _int_param(req: Request, name: str, *, minimum: int) -> int | None:
    text = req.param(name)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise BadParam(f"{name} must be an integer, got {text!r}") from None
    if value < minimum:
        raise BadParam(f"{name} must be at least {minimum}, got {value}")
    return value


def pick_container(pod: dict[str, Any], wanted: str | None) -> str:
    """The container a log/exec request is about, with kubectl's messages."""
    spec = pod.get("spec") or {}
    name = (pod.get("metadata") or {}).get("name", "")
    names = [c.get("name") for c in spec.get("containers") or [] if isinstance(c, dict)]
    init = [c.get("name") for c in spec.get("initContainers") or [] if isinstance(c, dict)]
    if wanted:
        if wanted not in names and wanted not in init:
            raise BadParam(f"container {wanted} is not valid for pod {name}")
        return wanted
    if len(names) == 1 and isinstance(names[0], str):
        return names[0]
    raise BadParam(f"a container name must be specified for pod {name}, choose one of: {names}")


def _node_of(pod: dict[str, Any]) -> str:
    node = (pod.get("spec") or {}).get("nodeName")
    if not isinstance(node, str) or not node:
        name = (pod.get("metadata") or {}).get("name", "")
        raise BadParam(f"pod {name} is not bound to a node yet")
    return node


async def _open(
    opener: StreamOpener, pod: dict[str, Any], key: str, op: str, params: dict[str, Any]
) -> tuple[contextlib.AsyncExitStack, PodStream, tuple[int, bytes] | None]:
    """Open the stream and wait for the node's first word: data (possibly empty:
    "accepted") or an error, which becomes the HTTP answer."""
    stack = contextlib.AsyncExitStack()
    try:
        stream = await stack.enter_async_context(opener.open_stream(_node_of(pod), key, op, params))
        with trio.move_on_after(OPEN_TIMEOUT) as scope:
            first = await stream.receive()
        if scope.cancelled_caught:
            raise StreamError(504, "Timeout", f"node {_node_of(pod)} did not answer the {op}")
        if first is None and (err := stream.error()) is not None:
            raise err
    except BaseException:
        await stack.aclose()
        raise
    return stack, stream, first


async def pod_logs(opener: StreamOpener, req: Request, pod: dict[str, Any], key: str) -> Response:
    params: dict[str, Any] = {
        "container": pick_container(pod, req.param("container")),
        "follow": req.flag("follow"),
    }
    tail = _int_param(req, "tailLines", minimum=0)
    if tail is not None:
        params["tail"] = tail
    limit = _int_param(req, "limitBytes", minimum=1)
    stack, stream, first = await _open(opener, pod, key, "logs", params)

    async def body() -> AsyncIterator[bytes]:
        sent = 0
        try:
            item = first
            while item is not None:
                data = item[1]
                if limit is not None:
                    data = data[: limit - sent]
                if data:
                    sent += len(data)
                    yield data
                if limit is not None and sent >= limit:
                    return
                item = await stream.receive()
        finally:
            await stack.aclose()

    return Response(200, headers=[("content-type", "text/plain; charset=utf-8")], stream=body())


def _exec_params(req: Request, pod: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """The node's exec parameters from the query (or a JSON body), and the timeout."""
    command = req.query.get("command") or []
    container = req.param("container")
    timeout = _int_param(req, "timeoutSeconds", minimum=1)
    if req.body.strip():
        try:
            doc = json.loads(req.body)
        except ValueError as exc:
            raise BadParam(f"request body is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise BadParam("request body must be a JSON object")
        command = doc.get("command", command)
        container = doc.get("container", container)
        timeout = doc.get("timeoutSeconds", timeout)
    if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
        raise BadParam("command must be a non-empty list of strings")
    if container is not None and not isinstance(container, str):
        raise BadParam("container must be a string")
    if timeout is None:
        timeout = 60
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int)
        or not (1 <= timeout <= MAX_EXEC_SECONDS)
    ):
        raise BadParam(f"timeoutSeconds must be 1..{MAX_EXEC_SECONDS}")
    params = {"container": pick_container(pod, container), "command": command, "timeout": timeout}
    return params, float(timeout)


def _timed_out(timeout: float) -> StreamError:
    return StreamError(504, "Timeout", f"the command did not finish in {timeout:.0f} s")


async def exec_in_pod(
    opener: StreamOpener, req: Request, pod: dict[str, Any], key: str
) -> Response:
    params, timeout = _exec_params(req, pod)
    stack, stream, item = await _open(opener, pod, key, "exec", params)
    out = {1: bytearray(), 2: bytearray()}
    truncated = False
    async with stack:
        with trio.move_on_after(timeout + OPEN_TIMEOUT) as scope:
            while item is not None:
                fd, data = item
                room = MAX_EXEC_OUTPUT - len(out[fd])
                truncated = truncated or len(data) > room
                out[fd] += data[: max(0, room)]
                item = await stream.receive()
        if scope.cancelled_caught:
            raise _timed_out(timeout)
    err = stream.error()
    if err is not None:
        raise err
    code = stream.result.get("exit_code")
    result: dict[str, Any] = {
        "kind": "ExecResult",
        "apiVersion": "edgeflock.io/v1",
        "exitCode": code if isinstance(code, int) else -1,
        "stdout": base64.b64encode(bytes(out[1])).decode(),
        "stderr": base64.b64encode(bytes(out[2])).decode(),
    }
    if truncated:
        result["truncated"] = True
    return json_response(200, result)


# kubectl's remotecommand WebSocket protocols, newest first (v5 adds a close
# message for stdin, which is not offered here anyway).
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
_CHANNEL_ERROR = 3


def wants_websocket(req: Request) -> bool:
    return req.headers.get("upgrade", "").lower() == "websocket"


def _exit_status(code: int | None, error: StreamError | None) -> dict[str, Any]:
    """The ``Status`` kubectl reads from the error channel (its exit code too)."""
    if error is None and code == 0:
        return {"metadata": {}, "status": "Success"}
    if error is None:
        return {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }
    return {
        "metadata": {},
        "status": "Failure",
        "message": str(error),
        "reason": error.reason,
        "code": error.code,
    }


async def exec_websocket(
    opener: StreamOpener, req: Request, pod: dict[str, Any], key: str
) -> Response:
    offered = [p.strip() for p in req.headers.get("sec-websocket-protocol", "").split(",")]
    protocol = next((p for p in EXEC_PROTOCOLS if p in offered), None)
    if protocol is None:
        raise BadParam(f"exec over WebSocket speaks {' or '.join(EXEC_PROTOCOLS)}")
    ws_key = req.headers.get("sec-websocket-key", "")
    if not ws_key:
        raise BadParam("a WebSocket upgrade needs Sec-WebSocket-Key")
    if req.flag("stdin") or req.flag("tty"):
        raise BadParam("exec here runs commands without stdin or a terminal: drop -i/-t")
    params, timeout = _exec_params(req, pod)
    # The node's first word decides the HTTP answer: an error stays an HTTP error.
    stack, stream, first = await _open(opener, pod, key, "exec", params)
    accept = base64.b64encode(hashlib.sha1((ws_key + _WS_GUID).encode()).digest()).decode()

    async def run(sock: trio.abc.Stream, leftover: bytes) -> None:
        ws = Connection(ConnectionType.SERVER, trailing_data=leftover)
        lock = trio.Lock()  # the output pump and the reader's pongs share the socket

        async def send(event: Event) -> None:
            async with lock:
                await sock.send_all(ws.send(event))

        async def read(done: trio.CancelScope) -> None:
            """Answer pings; the client closing ends the exec."""
            while True:
                data = await sock.receive_some(65536)
                ws.receive_data(bytes(data) or None)
                for event in ws.events():
                    if isinstance(event, Ping):
                        await send(event.response())
                    elif isinstance(event, CloseConnection):
                        with contextlib.suppress(Exception):
                            await send(event.response())
                        done.cancel()
                        return
                if not data:
                    done.cancel()
                    return

        async with stack, trio.open_nursery() as nursery:
            nursery.start_soon(read, nursery.cancel_scope)
            error: StreamError | None = None
            with trio.move_on_after(timeout + OPEN_TIMEOUT) as scope:
                item = first
                while item is not None:
                    fd, data = item
                    if data:
                        await send(BytesMessage(bytes([fd]) + data))
                    item = await stream.receive()
            if scope.cancelled_caught:
                error = StreamError(
                    504, "Timeout", f"the command did not finish in {timeout:.0f} s"
                )
            else:
                error = stream.error()
            code = stream.result.get("exit_code")
            status = _exit_status(code if isinstance(code, int) else -1, error)
            await send(BytesMessage(bytes([_CHANNEL_ERROR]) + json.dumps(status).encode()))
            await send(CloseConnection(code=1000))
            with trio.move_on_after(2):  # the client's close, then the connection ends
                await trio.sleep_forever()
            nursery.cancel_scope.cancel()

    headers = [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-accept", accept),
        ("sec-websocket-protocol", protocol),
    ]
    return Response(101, headers=headers, upgrade=run)
