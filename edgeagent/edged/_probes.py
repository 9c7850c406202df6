"""Liveness, readiness and startup probes: exec (CRI ExecSync), httpGet, tcpSocket.

One task per (container, probe) in the pod worker's nursery; a result change calls
back into the worker. Thresholds and periods as in Kubernetes' Probe."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import trio

from ._cri import Cri, pb
from ._errors import CriError

log = logging.getLogger(__name__)

__all__ = ["ProbeRunner", "probe_once"]


def _port(value: Any, container: Mapping[str, Any]) -> int:
    if isinstance(value, int):
        return value
    for p in container.get("ports") or []:
        if p.get("name") == value:
            return int(p.get("containerPort") or 0)
    try:
        return int(str(value))
    except ValueError:
        return 0


async def _http_get(host: str, port: int, path: str, headers: list[Any], seconds: float) -> bool:
    with trio.move_on_after(seconds):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            return False
        async with stream:
            lines = [f"GET {path or '/'} HTTP/1.0", f"Host: {host}:{port}", "User-Agent: edged"]
            lines += [f"{h.get('name')}: {h.get('value')}" for h in headers or []]
            await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
            data = b""
            while b"\r\n" not in data and len(data) < 4096:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
            parts = data.split(b" ", 2)
            try:
                code = int(parts[1])
            except (IndexError, ValueError):
                return False
            return 200 <= code < 400
    return False


async def _tcp(host: str, port: int, seconds: float) -> bool:
    with trio.move_on_after(seconds):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False


async def probe_once(
    cri: Cri, probe: Mapping[str, Any], container: Mapping[str, Any], cid: str, host: str
) -> bool:
    timeout = float(probe.get("timeoutSeconds") or 1)
    if "exec" in probe:
        cmd = [str(x) for x in (probe["exec"] or {}).get("command") or []]
        try:
            resp = await cri.call(
                "ExecSync",
                pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=max(1, int(timeout))),
                rpc_timeout=timeout + 5,
            )
        except CriError as exc:
            log.debug("exec probe in %s: %s", cid[:12], exc)
            return False
        return int(resp.exit_code) == 0
    if "httpGet" in probe:
        h = probe["httpGet"] or {}
        return await _http_get(
            str(h.get("host") or host), _port(h.get("port"), container), str(h.get("path") or "/"),
            list(h.get("httpHeaders") or []), timeout,
        )  # fmt: skip
    if "tcpSocket" in probe:
        t = probe["tcpSocket"] or {}
        return await _tcp(str(t.get("host") or host), _port(t.get("port"), container), timeout)
    return True


class ProbeRunner:
    """Runs one probe of one container until cancelled; ``result`` is None until the
    thresholds decide, then True/False; ``changed()`` is called on every flip."""

    def __init__(
        self,
        cri: Cri,
        kind: str,
        probe: Mapping[str, Any],
        container: Mapping[str, Any],
        cid: str,
        host: str,
        changed: Callable[[], None],
        gate: Callable[[], bool] = lambda: True,
    ) -> None:
        self.cri = cri
        self.kind = kind
        self.probe = probe
        self.container = container
        self.cid = cid
        self.host = host
        self._changed = changed
        self._gate = gate
        self.result: bool | None = None
        self.cancel_scope = trio.CancelScope()

    async def run(self) -> None:
        p = self.probe
        period = max(0.1, float(p.get("periodSeconds") or 10))
        success_needed = max(1, int(p.get("successThreshold") or 1))
        failure_needed = max(1, int(p.get("failureThreshold") or 3))
        with self.cancel_scope:
            await trio.sleep(float(p.get("initialDelaySeconds") or 0))
            ok_run = bad_run = 0
            while True:
                if self._gate():
                    ok = await probe_once(self.cri, p, self.container, self.cid, self.host)
                    if ok:
                        ok_run, bad_run = ok_run + 1, 0
                    else:
                        ok_run, bad_run = 0, bad_run + 1
                    new = self.result
                    if ok_run >= success_needed:
                        new = True
                    elif bad_run >= failure_needed:
                        new = False
                    if new != self.result:
                        self.result = new
                        log.info(
                            "%s probe of container %s: %s",
                            self.kind, self.cid[:12], "success" if new else "failure",
                        )  # fmt: skip
                        self._changed()
                    if self.kind == "startup" and self.result:
                        return  # a startup probe stops once it succeeded
                await trio.sleep(period)
