"""The NodeGroup controller: KubeEdge's node groups, kept on the Nodes.

For each ``apps.kubeedge.io/v1alpha1`` NodeGroup it writes the membership label
``apps.kubeedge.io/belonging-to: <group>`` on the nodes the group selects
(``spec.nodes``, ``spec.matchLabels``; see ``_nodegroup_plan``), removes it from
nodes that stopped matching (and from every node when the group is deleted),
evicts the pods that were placed on a node for a group it no longer belongs to
(their ``spec.nodeSelector`` names the group), and reports
``status.nodeStatuses``. Level-triggered: each reconcile reads the group, the
nodes and the pods from the store, so a restart continues where it stopped.

A group is reconciled when it changes, and when a node's labels or Ready
status change (every group: any may select it) or the node comes or goes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import edgeproto

from .._store import UNCHANGED, Conflict, NotFound, Record, Store
from ._nodegroup_plan import (
    LABEL_BELONGING_TO,
    LabelChange,
    apply_label_change,
    misplaced,
    plan_group,
    ready_status,
)

log = logging.getLogger(__name__)

__all__ = ["NodeGroupController"]

ALL_GROUPS = "nodegroups//"


def _map(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _labels(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return _map(_map(obj.get("metadata") if obj else None).get("labels"))


class NodeGroupController:
    """Runs under ``run_controllers``: ``NodeGroupController(store)``."""

    name = "nodegroup"
    prefixes = ("nodegroups/", "nodes/")

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self.labelled = 0  # label writes on nodes
        self.evicted = 0  # pods deleted because their node left their group

    def statistics(self) -> dict[str, int]:
        return {"labelled": self.labelled, "evicted": self.evicted}

    def keys_for(
        self, key: str, value: Mapping[str, Any] | None, prev: Mapping[str, Any] | None
    ) -> Iterable[str]:
        if key.startswith("nodegroups/"):
            return [key]
        keys = []
        for obj in (value, prev):
            held = _labels(obj).get(LABEL_BELONGING_TO)
            if isinstance(held, str) and held:
                keys.append(edgeproto.make_key("nodegroups", "", held))
        if (
            value is None
            or prev is None
            or _labels(value) != _labels(prev)
            or ready_status(value) != ready_status(prev)
        ):
            keys.append(ALL_GROUPS)  # any group may select (or report) this node
        return keys

    async def reconcile(self, key: str) -> float | None:
        _, _, name = edgeproto.split_key(key)
        group: Mapping[str, Any] | None
        try:
            rec = await self._store.get(key)
            group = rec.value
        except NotFound:
            group = None
        nodes, _ = await self._store.list("nodes/")
        groups, _ = await self._store.list("nodegroups/")
        plan = plan_group(
            name,
            group,
            [r.value for r in nodes],
            [edgeproto.split_key(g.key)[2] for g in groups],
        )
        labels = {edgeproto.split_key(r.key)[2]: dict(_labels(r.value)) for r in nodes}
        for change in plan.changes:
            await self._relabel(change)
            have = labels.setdefault(change.node, {})
            for k, v in change.remove.items():
                if have.get(k) == v:
                    del have[k]
            have.update(change.set)
        if plan.leaving:
            log.info("node group %s: %s left", name, ", ".join(plan.leaving))
        await self._evict_misplaced(name, labels)
        if group is not None and plan.node_statuses is not None:
            await self._write_status(key, plan.node_statuses)
        return None

    async def _relabel(self, change: LabelChange) -> None:
        def edit(cur: Record) -> Any:
            new = apply_label_change(cur.value, change)
            return UNCHANGED if new is None else new

        try:
            ev = await self._store.modify(edgeproto.make_key("nodes", "", change.node), edit)
        except NotFound:
            return  # the node went away: nothing to label
        if ev is not None:
            self.labelled += 1
            log.info(
                "node %s: labels %s set, %s removed",
                change.node,
                dict(change.set) or "none",
                list(change.remove) or "none",
            )

    async def _evict_misplaced(self, group: str, labels: Mapping[str, Mapping[str, Any]]) -> None:
        """Delete the pods placed on a node for ``group`` (their nodeSelector
        names it) while the node no longer belongs to it. Checked on every
        reconcile, so an eviction a crash interrupted is done the next time."""
        pods, _ = await self._store.list("pods/")
        for rec in pods:
            if not misplaced(group, rec.value, labels):
                continue
            node = _map(rec.value.get("spec")).get("nodeName")
            try:
                await self._store.delete(rec.key, expect_rev=rec.mod_rev)
            except NotFound:
                continue
            except Conflict:
                raise  # changed since listed: the runtime retries with a fresh read
            self.evicted += 1
            log.info("evicted %s: node %s left node group %s", rec.key, node, group)

    async def _write_status(self, key: str, statuses: list[dict[str, Any]]) -> None:
        def edit(cur: Record) -> Any:
            status = dict(_map(cur.value.get("status")))
            if status.get("nodeStatuses") == statuses:
                return UNCHANGED
            status["nodeStatuses"] = statuses
            return status

        try:
            await self._store.modify(key, edit, status=True)
        except NotFound:
            pass  # deleted meanwhile: its own event reconciles it again
