"""The board's side of agent upgrades as the hub sees it: the pieces a board
asks for (``request`` messages ``release-manifest`` and ``release-chunk``)
and the ``upgrade`` reports it sends about its own Node.

A board may read only the release its own Node's assignment
(``edgeproto.upgrade.ANNOTATION``) names: anything else is 403. An unknown or
incomplete release is 404, a store in trouble 503 (the board asks again
later). A report is written into its job's ``status.nodeStatus`` entry for
the node, in one store transaction with the read, and only for the job it
names by name *and* uid; a report about a job that is gone (or was deleted
and made again) is acknowledged and dropped, and counted.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

import edgeproto
from edgeproto import Message
from edgeproto.upgrade import (
    ANNOTATION,
    REQUEST_CHUNK,
    REQUEST_MANIFEST,
    NodeState,
    UpgradeError,
    UpgradeReport,
    decode_assignment,
)

from ._releases import Releases
from ._store import UNCHANGED, NotFound, Record, Store, StoreError

log = logging.getLogger(__name__)

__all__ = ["JOBS", "UpgradeChannel", "job_key"]

JOBS = "nodeupgradejobs/"  # store prefix of NodeUpgradeJobs (cluster-scoped)
REQUEST_OPS = frozenset({REQUEST_MANIFEST, REQUEST_CHUNK})


def job_key(name: str) -> str:
    return edgeproto.make_key("nodeupgradejobs", "", name)


def _error(code: int, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class _Dropped(Exception):
    """The report is about no live job entry of this node: acked, not written."""


class UpgradeChannel:
    """Answers a node's release requests and applies its upgrade reports;
    ``counters`` is the hub's."""

    def __init__(self, store: Store, releases: Releases | None, counters: Counter[str]) -> None:
        self._store = store
        self.releases = releases
        self.counters = counters
        self.report_states: Counter[str] = Counter()  # applied upgrade reports by state

    # ---- requests ----------------------------------------------------------------------

    async def request(self, node: str, msg: Message) -> dict[str, Any]:
        sha = msg.res or ""
        releases = self.releases
        if releases is None:
            return _error(404, "this gateway serves no releases")
        try:
            refused = await self._assigned(node, sha)
            if refused is not None:
                self.counters["forbidden"] += 1
                self.counters["release_requests_forbidden"] += 1
                return _error(403, refused)
            got = await releases.manifest(sha)
            if got is None:
                return _error(404, f'release "{sha}" not found')
            if not await releases.complete(sha):
                return _error(404, f'release "{sha}" is incomplete: its upload has not finished')
            m, manifest, signature = got
            if msg.op == REQUEST_MANIFEST:
                self.counters["release_manifests_served"] += 1
                return {"manifest": manifest, "signature": signature}
            body = msg.body
            index = body.get("index") if isinstance(body, dict) else None
            if type(index) is not int or not 0 <= index < len(m.chunks):
                return _error(
                    400, f"index must be a piece number 0-{len(m.chunks) - 1}, not {index!r}"
                )
            data = await releases.piece(sha, index)
            if data is None:
                return _error(404, f'release "{sha}" has no piece {index}')
            self.counters["release_bytes_served"] += len(data)
            return {"data": data}
        except StoreError as exc:
            self.counters["release_requests_unavailable"] += 1
            return _error(503, f"the release store cannot answer now: {exc}")

    async def _assigned(self, node: str, sha: str) -> str | None:
        """Why ``node`` may not read release ``sha`` (None: it may)."""
        try:
            rec = await self._store.get(edgeproto.make_key("nodes", "", node))
        except NotFound:
            return f"node {node} does not exist"
        annotations = (rec.value.get("metadata") or {}).get("annotations") or {}
        value = annotations.get(ANNOTATION) if isinstance(annotations, dict) else None
        if value is None:
            return f"no upgrade is assigned to node {node}"
        try:
            assignment = decode_assignment(value)
        except UpgradeError as exc:
            return f"node {node}'s assignment is unusable: {exc}"
        if assignment.release != sha:
            return f"release {sha[:80]!r} is not the one assigned to node {node}"
        return None

    # ---- reports -----------------------------------------------------------------------

    async def report(self, node: str, r: UpgradeReport) -> None:
        """Write ``r`` into its job's status (persisted before this returns);
        a report about a job that is gone is dropped (counted), not refused."""
        try:
            await self._store.modify(job_key(r.job), _report_edit(node, r), status=True)
        except NotFound:
            self._drop(node, r, "the job is gone")
            return
        except _Dropped as exc:
            self._drop(node, r, str(exc))
            return
        self.counters["upgrade_reports"] += 1
        self.report_states[r.state.value] += 1
        log.info(
            "node %s: upgrade %s (job %s) %s%s",
            node,
            r.version,
            r.job,
            r.state.value,
            f": {r.reason}" if r.reason else "",
            extra={"node": node},
        )

    def _drop(self, node: str, r: UpgradeReport, why: str) -> None:
        self.counters["upgrade_reports_dropped"] += 1
        log.info("node %s: upgrade report about job %s dropped: %s", node, r.job, why)


def _report_edit(node: str, r: UpgradeReport) -> Any:
    def edit(rec: Record) -> Any:
        meta = rec.value.get("metadata") or {}
        if meta.get("uid") != r.uid:
            raise _Dropped(f"job {r.job} is another job now (uid {meta.get('uid')})")
        status: dict[str, Any] = json.loads(json.dumps(rec.value.get("status") or {}))
        entries = status.get("nodeStatus")
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and entry.get("nodeName") == node:
                break
        else:
            raise _Dropped(f"node {node} is not one of job {r.job}'s nodes")
        try:
            current = NodeState(str(entry.get("state")))
        except ValueError:
            current = NodeState.PENDING
        if current.terminal and not r.state.terminal:
            raise _Dropped(f"node {node} is already {current.value} in job {r.job}")
        if entry.get("state") == r.state.value and entry.get("reason") == r.reason:
            return UNCHANGED
        entry.update(state=r.state.value, reason=r.reason, time=r.time)
        return status

    return edit
