"""The API's ``pods/NAME/log`` and ``pods/NAME/exec`` subresources, served by
opening a stream on the pod's node through the hub.

``GET .../pods/P/log?container=C&tailLines=N&follow=true&limitBytes=B`` answers
``text/plain`` (chunked while following), like Kubernetes'.
``POST .../pods/P/exec?container=C&command=sh&command=-c&command=...``
(or a JSON body ``{"command": [...], "container": C, "timeoutSeconds": T}``)
runs the command without a terminal and answers
``{"kind": "ExecResult", "exitCode": N, "stdout": B64, "stderr": B64}``:
Kubernetes' SPDY/WebSocket exec upgrade is not offered.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

import trio

from ._http import Request, Response, json_response
from ._streams import NodeStream, StreamError

__all__ = ["MAX_EXEC_OUTPUT", "StreamOpener", "exec_in_pod", "pod_logs"]

MAX_EXEC_OUTPUT = 8 * 1024 * 1024  # per stream; beyond it the output is cut, and says so
MAX_EXEC_SECONDS = 600
OPEN_TIMEOUT = 15.0  # the node answers a stream-open at once (data or an error)


class StreamOpener(Protocol):
    def open_stream(
        self, node: str, key: str, op: str, params: dict[str, Any]
    ) -> contextlib.AbstractAsyncContextManager[NodeStream]: ...


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
) -> tuple[contextlib.AsyncExitStack, NodeStream, tuple[int, bytes] | None]:
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


def _exec_request(req: Request) -> tuple[list[str], str | None, float]:
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
    return command, container, float(timeout)


async def exec_in_pod(
    opener: StreamOpener, req: Request, pod: dict[str, Any], key: str
) -> Response:
    command, container, timeout = _exec_request(req)
    params = {
        "container": pick_container(pod, container),
        "command": command,
        "timeout": timeout,
    }
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
            raise StreamError(504, "Timeout", f"the command did not finish in {timeout:.0f} s")
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
