"""A simulated board for workload tests: enrolled for real (join token, CSR,
certificate), it speaks the real hub protocol (hello with its last revision,
snapshot or delta, acks after "persisting" into memory, pings) and reports the
status of each pod it is given, as edged would: Running and Ready, or, for an
image whose name contains ``bad``, waiting with ``ErrImagePull``.

It keeps its view across reconnects, as a board keeps its SQLite, so a
reconnect resyncs by delta; ``starts`` counts every pod (by uid) it started,
so a test sees a pod restarted or recreated by a reconnect."""

from __future__ import annotations

import contextlib
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import trio
import trio_websocket as tws

import edgeproto
from edgeagent._hub import open_hub_connection
from edgeagent._tls import client_ssl_context
from edgeproto import AgentSync, Kind, Message
from tests.conftest import Gateway, join_node


def pod_status(pod: dict[str, Any], now: float) -> dict[str, Any]:
    at = edgeproto.rfc3339(now)
    containers = (pod.get("spec") or {}).get("containers") or []
    bad = [c for c in containers if "bad" in str(c.get("image", ""))]
    if bad:
        return {
            "phase": "Pending",
            "conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": at},
                {"type": "ContainersReady", "status": "False", "lastTransitionTime": at},
            ],
            "containerStatuses": [
                {
                    "name": c.get("name"),
                    "image": c.get("image"),
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "waiting": {
                            "reason": "ErrImagePull",
                            "message": f"pull {c.get('image')}: not found",
                        }
                    },
                }
                for c in containers
            ],
        }
    return {
        "phase": "Running",
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": at},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": at},
        ],
        "containerStatuses": [
            {
                "name": c.get("name"),
                "image": c.get("image"),
                "ready": True,
                "restartCount": 0,
                "started": True,
                "state": {"running": {"startedAt": at}},
            }
            for c in containers
        ],
    }


def apply_to_view(view: dict[str, dict[str, Any]], apply: Any) -> dict[str, dict[str, Any]]:
    """A fake board's view after an ``edgeproto.Apply`` (snapshot or change): the
    objects decoded, by key (a new dict on a snapshot, else ``view`` changed)."""
    if apply.replace:
        view = {}
    for key in apply.deletes:
        view.pop(key, None)
    for e in apply.upserts:
        view[e.key] = edgeproto.decode_object(e.data)
    return view


class SimBoard:
    def __init__(self, gw: Gateway, name: str, data_dir: Path) -> None:
        self.gw = gw
        self.name = name
        self.data_dir = data_dir
        self.sync = AgentSync(name, 0)
        self.view: dict[str, dict[str, Any]] = {}
        self.starts: Counter[str] = Counter()  # pod uid -> times started
        self.reported: set[str] = set()  # pod uids whose status was reported
        self.resyncs: list[str] = []  # "snapshot" / "delta", in order
        self.pod_counts: list[int] = []  # pods held after each batch applied, in order
        self.connected = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._seq = 0

    async def join(self) -> None:
        await join_node(self.gw, self.name, self.data_dir)

    def hub_url(self) -> str:
        import json

        return str(json.loads((self.data_dir / "enrollment.json").read_text())["hub"])

    def pods(self) -> dict[str, dict[str, Any]]:
        """Pods in the view, by name."""
        return {v["metadata"]["name"]: v for k, v in self.view.items() if k.startswith("pods/")}

    def images(self) -> dict[str, list[str]]:
        return {
            n: [c.get("image") for c in (p.get("spec") or {}).get("containers") or []]
            for n, p in self.pods().items()
        }

    def start(self, nursery: trio.Nursery) -> None:
        self.connected = trio.Event()
        self._stopped = trio.Event()
        self._scope = trio.CancelScope()
        nursery.start_soon(self._run, self._scope, self._stopped)

    async def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()
        await self._stopped.wait()

    async def _run(self, scope: trio.CancelScope, stopped: trio.Event) -> None:
        try:
            with scope:
                while True:
                    with contextlib.suppress(
                        OSError, tws.ConnectionClosed, trio.BrokenResourceError, ssl.SSLError
                    ):
                        await self._session()
                    await trio.sleep(0.1)  # reconnect backoff
        finally:
            stopped.set()

    async def _session(self) -> None:
        ctx = client_ssl_context(self.data_dir)
        async with open_hub_connection(
            self.hub_url(), ctx, connect_timeout=5, max_message=edgeproto.DEFAULT_MAX_MESSAGE * 2
        ) as ws:
            await ws.send_message(
                edgeproto.encode_message(self.sync.hello(now=trio.current_time()))
            )
            while True:
                with trio.move_on_after(1.0):
                    msg = edgeproto.decode_message(await ws.get_message())
                    if msg.kind in (Kind.SNAPSHOT, Kind.CHANGE):
                        apply = self.sync.receive(msg, nbytes=0, now=trio.current_time())
                        if apply is not None:
                            self._apply(apply)
                            if apply.rev is not None:
                                await ws.send_message(
                                    edgeproto.encode_message(self.sync.persisted(apply.rev))
                                )
                                self.connected.set()
                            await self._report(ws)
                    continue
                await ws.send_message(edgeproto.encode_message(Message(Kind.PING, id=1)))

    def _apply(self, apply: Any) -> None:
        if apply.resync is not None:
            self.resyncs.append(apply.resync.mode)
        self.view = apply_to_view(self.view, apply)
        for key, obj in self.view.items():
            if key.startswith("pods/"):
                uid = obj["metadata"]["uid"]
                if uid not in self.starts:
                    self.starts[uid] = 1
        self.pod_counts.append(sum(1 for k in self.view if k.startswith("pods/")))

    async def _report(self, ws: tws.WebSocketConnection) -> None:
        import time

        for key, obj in list(self.view.items()):
            if not key.startswith("pods/"):
                continue
            uid = obj["metadata"]["uid"]
            if uid in self.reported:
                continue
            self.reported.add(uid)
            self._seq += 1
            await ws.send_message(
                edgeproto.encode_message(
                    Message(
                        Kind.REPORT,
                        id=self._seq,
                        res=key,
                        op="status",
                        body={"status": pod_status(obj, time.time())},
                    )
                )
            )
