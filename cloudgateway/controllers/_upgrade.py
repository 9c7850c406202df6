"""The NodeUpgradeJob controller: hands an agent release to the targeted
boards through their Node's assignment annotation
(``edgeproto.upgrade.ANNOTATION``), at most ``concurrency`` at a time, and
follows the job to its end; the decisions are ``_upgrade_plan.py``'s.

A reconcile of a job reads the job, its nodes and the releases of its
version, writes the job's next status in one store transaction with the read
(so a board's report written meanwhile is never lost), then makes the Nodes'
annotations what the stored status says: present on handed-out, unfinished
nodes while the job is upgrading; removed everywhere else (a node finished, the
job completed, failed, aborted or deleted). Everything it needs is in the
store, so a restarted gateway or a new leader carries on where it stopped.

A reconcile of a Node (one that carries an assignment) removes the
assignment when its job is gone, is another job now (uid), has ended, or has
finished with that node.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

import edgeproto
from edgeproto.upgrade import (
    ANNOTATION,
    ARCH_OF_NODE,
    Assignment,
    UpgradeError,
    decode_assignment,
    encode_assignment,
)

from .._appsvalidate import selector_matches
from .._releases import Releases
from .._store import UNCHANGED, NotFound, Record, Store
from .._upgradehub import JOBS, job_key
from ._upgrade_plan import (
    UPGRADING,
    NodeFacts,
    ReleaseRef,
    agent_version,
    assigned,
    next_deadline,
    next_status,
)

log = logging.getLogger(__name__)

__all__ = ["UpgradeJobController"]

NODES = "nodes/"
_REQUEUE_MAX = 30.0  # seconds: an upgrading job is looked at again at least this often


def _node_key(name: str) -> str:
    return edgeproto.make_key("nodes", "", name)


def _annotation(value: Mapping[str, Any] | None) -> str | None:
    meta = (value or {}).get("metadata")
    ann = meta.get("annotations") if isinstance(meta, Mapping) else None
    v = ann.get(ANNOTATION) if isinstance(ann, Mapping) else None
    return v if isinstance(v, str) else None


def _ready(node: Mapping[str, Any]) -> bool:
    for c in (node.get("status") or {}).get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def _labels(node: Mapping[str, Any]) -> Mapping[str, Any]:
    labels = (node.get("metadata") or {}).get("labels")
    return labels if isinstance(labels, Mapping) else {}


def _relevant(node: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """What of a Node the jobs decide on."""
    if node is None:
        return (None,)
    return (_ready(node), agent_version(node), dict(_labels(node)), _annotation(node))


class UpgradeJobController:
    name = "nodeupgradejobs"
    prefixes: Sequence[str] = (JOBS, NODES)

    def __init__(
        self,
        store: Store,
        releases: Releases,
        *,
        clock: Callable[[], float] = time.time,
        job_states: MutableMapping[str, str] | None = None,
    ) -> None:
        """``job_states``: filled with each job's state as last seen (metrics)."""
        self._store = store
        self._releases = releases
        self._clock = clock
        self._active: set[str] = set()  # keys of jobs not ended
        self.job_states = job_states if job_states is not None else {}

    # ---- what to reconcile ---------------------------------------------------------------

    def keys_for(
        self, key: str, value: Mapping[str, Any] | None, prev: Mapping[str, Any] | None
    ) -> Iterable[str]:
        if key.startswith(JOBS):
            state = ((value or {}).get("status") or {}).get("state")
            if value is None or state not in (None, UPGRADING):
                self._active.discard(key)
            else:
                self._active.add(key)
            return [key]
        out: list[str] = []
        if _annotation(value) is not None:
            out.append(key)
        if prev is None or _relevant(value) != _relevant(prev):
            out.extend(self._active)
        return out

    async def reconcile(self, key: str) -> float | None:
        if key.startswith(NODES):
            await self._reconcile_node(key)
            return None
        return await self._reconcile_job(key)

    # ---- a job -----------------------------------------------------------------------------

    async def _reconcile_job(self, key: str) -> float | None:
        name = key.rsplit("/", 1)[1]
        try:
            job = await self._store.get(key)
        except NotFound:
            self.job_states.pop(name, None)
            await self._forget(name, uid=None)
            return None
        value = job.value
        status = value.get("status") or {}
        targets: list[str] | None = None
        if not status.get("state"):
            targets = await self._targets(value.get("spec") or {})
            names = targets
        else:
            names = [
                str(e.get("nodeName"))
                for e in status.get("nodeStatus") or []
                if isinstance(e, dict)
            ]
        facts, seen = await self._facts(names, value)
        releases = await self._release_refs(str((value.get("spec") or {}).get("version")))
        now = self._clock()

        def edit(rec: Record) -> Any:
            if (rec.value.get("metadata") or {}).get("uid") != (value.get("metadata") or {}).get(
                "uid"
            ):
                raise NotFound(f"{key} was re-created", key=key)
            new = next_status(rec.value, targets=targets, facts=facts, releases=releases, now=now)
            return UNCHANGED if new == rec.value.get("status") else new

        ev = await self._store.modify(key, edit, status=True)
        current = ev.record.value if ev is not None else value
        state = str((current.get("status") or {}).get("state") or "")
        if self.job_states.get(name) != state:
            log.info("nodeupgradejob %s: %s", name, state)
        self.job_states[name] = state
        if state != UPGRADING:
            self._active.discard(key)
        await self._converge(current, names, seen)
        deadline = next_deadline(current)
        if deadline is None:
            return None
        return max(0.05, min(_REQUEUE_MAX, deadline - self._clock() + 1.0))

    async def _targets(self, spec: Mapping[str, Any]) -> list[str]:
        names = spec.get("nodeNames")
        if isinstance(names, list) and names:
            return sorted({str(n) for n in names})
        selector = spec.get("labelSelector")
        if not isinstance(selector, Mapping) or not selector:
            return []
        out: list[str] = []
        after: str | None = None
        while True:
            records, _ = await self._store.list(NODES, after=after, limit=256)
            for rec in records:
                if selector_matches(selector, _labels(rec.value)):
                    out.append(rec.key.rsplit("/", 1)[1])
            if len(records) < 256:
                return sorted(out)
            after = records[-1].key

    async def _facts(
        self, names: list[str], job: Mapping[str, Any]
    ) -> tuple[dict[str, NodeFacts | None], dict[str, str | None]]:
        """What the plan needs of each node, and the assignment each carries."""
        meta = job.get("metadata") or {}
        records = {
            r.key.rsplit("/", 1)[1]: r.value
            for r in await self._store.get_many([_node_key(n) for n in names])
        }
        out: dict[str, NodeFacts | None] = {}
        seen: dict[str, str | None] = {}
        for n in names:
            node = records.get(n)
            if node is None:
                out[n] = None
                continue
            busy = None
            text = seen[n] = _annotation(node)
            if text is not None:
                try:
                    a = decode_assignment(text)
                except UpgradeError:
                    a = None
                if a is not None and (a.job != meta.get("name") or a.uid != meta.get("uid")):
                    busy = a.job
            arch = _labels(node).get("kubernetes.io/arch")
            out[n] = NodeFacts(
                ready=_ready(node),
                version=agent_version(node),
                arch=ARCH_OF_NODE.get(arch) if isinstance(arch, str) else None,
                busy=busy,
            )
        return out, seen

    async def _release_refs(self, version: str) -> dict[str, ReleaseRef]:
        best: dict[str, tuple[str, str, int]] = {}
        for r in await self._releases.list():
            if r.version != version or not r.complete:
                continue
            mine = (r.created, r.sha256, r.size)
            if r.arch not in best or mine > best[r.arch]:
                best[r.arch] = mine
        return {arch: ReleaseRef(sha, size) for arch, (_, sha, size) in best.items()}

    # ---- the Nodes' annotations -------------------------------------------------------------

    async def _converge(
        self, job: Mapping[str, Any], names: list[str], seen: Mapping[str, str | None]
    ) -> None:
        """Annotations on ``names`` as the stored job status says (``seen``:
        what each carried when read; a node that already agrees is not written)."""
        want = assigned(job)
        meta = job.get("metadata") or {}
        for n in names:
            if n not in seen:
                continue  # no such node
            a = want.get(n)
            if a is not None and seen[n] == encode_assignment(a):
                continue
            if a is None and not _is_of(seen[n], str(meta.get("name")), meta.get("uid")):
                continue
            try:
                if a is not None:
                    await self._store.modify(_node_key(n), _put_assignment(a))
                else:
                    await self._store.modify(
                        _node_key(n), _drop_assignment(str(meta.get("name")), meta.get("uid"))
                    )
            except NotFound:
                continue

    async def _forget(self, name: str, *, uid: str | None) -> None:
        """A job deleted: its assignment off every node that carries it."""
        after: str | None = None
        while True:
            records, _ = await self._store.list(NODES, after=after, limit=256)
            for rec in records:
                text = _annotation(rec.value)
                if text is None:
                    continue
                try:
                    a = decode_assignment(text)
                except UpgradeError:
                    continue
                if a.job == name and (uid is None or a.uid == uid):
                    await self._reconcile_node(rec.key)
            if len(records) < 256:
                return
            after = records[-1].key

    async def _reconcile_node(self, key: str) -> None:
        try:
            node = await self._store.get(key)
        except NotFound:
            return
        text = _annotation(node.value)
        if text is None:
            return
        node_name = key.rsplit("/", 1)[1]
        try:
            a = decode_assignment(text)
        except UpgradeError:
            a = None
        keep = False
        if a is not None:
            try:
                job = await self._store.get(job_key(a.job))
            except NotFound:
                job = None
            if job is not None and (job.value.get("metadata") or {}).get("uid") == a.uid:
                keep = assigned(job.value).get(node_name) == a
        if keep:
            return
        log.info("node %s: upgrade assignment removed (%s)", node_name, a.job if a else "unusable")
        await self._store.modify(key, _drop_assignment(None, None, exact=text))


def _is_of(text: str | None, job: str, uid: Any) -> bool:
    if text is None:
        return False
    try:
        a = decode_assignment(text)
    except UpgradeError:
        return False
    return a.job == job and a.uid == uid


def _annotations_of(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.setdefault("metadata", {})
    ann = meta.get("annotations")
    if not isinstance(ann, dict):
        ann = meta["annotations"] = {}
    out: dict[str, Any] = ann
    return out


def _put_assignment(a: Assignment) -> Callable[[Record], Any]:
    text = encode_assignment(a)

    def edit(rec: Record) -> Any:
        if _annotation(rec.value) == text:
            return UNCHANGED
        obj: dict[str, Any] = json.loads(json.dumps(rec.value))
        _annotations_of(obj)[ANNOTATION] = text
        return obj

    return edit


def _drop_assignment(
    job: str | None, uid: Any, *, exact: str | None = None
) -> Callable[[Record], Any]:
    """Remove the assignment if it is this job's (by name and uid), or is
    exactly ``exact``; leave another job's alone."""

    def edit(rec: Record) -> Any:
        text = _annotation(rec.value)
        if text is None:
            return UNCHANGED
        if exact is not None:
            if text != exact:
                return UNCHANGED
        else:
            try:
                a = decode_assignment(text)
            except UpgradeError:
                return UNCHANGED
            if a.job != job or a.uid != uid:
                return UNCHANGED
        obj: dict[str, Any] = json.loads(json.dumps(rec.value))
        ann = _annotations_of(obj)
        ann.pop(ANNOTATION, None)
        if not ann:
            obj["metadata"].pop("annotations", None)
        return obj

    return edit
