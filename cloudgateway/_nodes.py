"""A board's Node at join: the labels it asked for (checked before its token is
spent) beside the well-known ones, written when the Node is created. After
that the Node's metadata and spec are the cloud's: a re-join of an existing
Node does not apply the labels the board asks for (an operator may have
changed or removed them since) and only refreshes ``kubernetes.io/arch`` and
``kubernetes.io/os``, which describe the board itself, as the kubelet does at
re-registration (``updateDefaultLabels``). Labels, annotations, taints and
``spec.unschedulable`` are never changed by the board."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import edgeproto
from edgeproto.labels import (
    EDGE_ROLE,
    HOSTNAME,
    LABEL_ARCH,
    LABEL_OS,
    LabelError,
    check_node_labels,
    is_label_value,
)

from ._store import UNCHANGED, AlreadyExists, NotFound, Record, Store

log = logging.getLogger(__name__)

__all__ = ["NodeJoin", "ensure_node", "node_join_from_request", "node_labels", "node_object"]


@dataclass(frozen=True, slots=True)
class NodeJoin:
    """What a joining board says about itself: the labels it asks for and its
    architecture and OS (``kubernetes.io/arch``/``os`` values; None when an
    older agent did not say)."""

    labels: Mapping[str, str] = field(default_factory=dict)
    arch: str | None = None
    os: str | None = None


def node_join_from_request(body: Mapping[str, Any]) -> NodeJoin:
    """The ``labels``, ``arch`` and ``os`` of a join request body, checked.
    Raises ``LabelError`` (the message names the bad label or field)."""
    labels = check_node_labels(body.get("labels") or {})
    board: dict[str, str | None] = {}
    for name, label in (("arch", LABEL_ARCH), ("os", LABEL_OS)):
        value = body.get(name)
        if value is not None and not (isinstance(value, str) and value and is_label_value(value)):
            raise LabelError(f"{name} {value!r} is not a valid value of label {label!r}")
        board[name] = value
    return NodeJoin(labels, board["arch"], board["os"])


def node_labels(node: str, join: NodeJoin) -> dict[str, str]:
    """The labels of a new Node: the well-known ones, then the board's own
    (which win on a clash, as kubelet's ``--node-labels`` do)."""
    labels: dict[str, str] = {}
    if is_label_value(node):  # a node name longer than 63 characters is no label value
        labels[HOSTNAME] = node
    if join.arch:
        labels[LABEL_ARCH] = join.arch
    if join.os:
        labels[LABEL_OS] = join.os
    labels[EDGE_ROLE] = ""
    labels.update(join.labels)
    return labels


def node_object(node: str, join: NodeJoin) -> dict[str, Any]:
    """A new Node for a board that joined."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node, "labels": node_labels(node, join)},
        "spec": {},
    }


def _rejoined(node: str, join: NodeJoin) -> Any:
    """The edit of an existing Node at a re-join: the board's arch and OS
    refreshed (when it says them); nothing else is touched."""
    wanted = node_labels(node, join)
    board = {k: wanted.get(k) for k in (LABEL_ARCH, LABEL_OS)}

    def edit(rec: Record) -> Any:
        meta = rec.value.get("metadata")
        labels = meta.get("labels") if isinstance(meta, dict) else None
        labels = dict(labels) if isinstance(labels, dict) else {}
        changed = {k: v for k, v in board.items() if v and labels.get(k) != v}
        if not changed:
            return UNCHANGED
        obj = copy.deepcopy(rec.value)
        obj.setdefault("metadata", {})["labels"] = {**labels, **changed}
        return obj

    return edit


async def ensure_node(store: Store, node: str, join: NodeJoin) -> bool:
    """Create ``node``'s Node with its labels (True), or, a re-join, leave the
    existing one as the cloud has it but for the board's arch and OS (False)."""
    key = edgeproto.make_key("nodes", "", node)
    for _ in range(3):
        try:
            await store.create(key, node_object(node, join))
            return True
        except AlreadyExists:
            pass
        try:
            if await store.modify(key, _rejoined(node, join)) is not None:
                log.info("node %s re-joined: its arch/os labels refreshed", node)
            return False
        except NotFound:  # deleted in between: create it after all
            continue
    return False
