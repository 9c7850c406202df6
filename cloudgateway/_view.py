"""A node's view of the store: what the gateway sends to one edge node.

The view is its Node object, the objects owned by the node (pods bound to it,
ConfigMaps/Secrets labelled for it) and what those pods reference. It is
computed at any revision still in the store's history, so a resync diffs the
view at the agent's last revision against the view now.

These functions are blocking (any ``Backend``); the hub runs them in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import edgeproto
from edgeproto import Entry, diff_views, encode_object, plan_resync

from ._backend import Backend, Compacted, Record
from ._ssa import without_managed_fields

__all__ = ["View", "ViewSync", "compute_view", "plan_node_sync"]

_OWNED_PREFIXES = tuple(f"{r.name}/" for r in edgeproto.RESOURCES)


@dataclass(frozen=True, slots=True)
class View:
    records: dict[str, Record]
    refs: frozenset[str]  # every key the view depends on, present or not

    def membership(self) -> dict[str, int]:
        return {k: r.spec_rev for k, r in self.records.items()}


def compute_view(backend: Backend, node: str, rev: int | None = None) -> View:
    # One read of everything placed on the node (one range of its index on
    # etcd, not one per kind), kept to the kinds a view holds.
    records: dict[str, Record] = {
        rec.key: rec
        for rec in backend.list_by_node("", node, rev=rev)
        if rec.key.startswith(_OWNED_PREFIXES)
    }
    refs: set[str] = set(records)
    wanted: set[str] = set()
    for rec in records.values():
        wanted.update(edgeproto.referenced_keys(rec.key, rec.value))
    refs |= wanted
    missing = wanted - records.keys()
    if missing:
        for rec in backend.get_many(sorted(missing), rev=rev):
            records[rec.key] = rec
    return View(records, frozenset(refs))


@dataclass(frozen=True, slots=True)
class ViewSync:
    """What to send a node: upserts and deletes (or a full snapshot) up to ``rev``."""

    mode: Literal["delta", "snapshot", "live"]
    rev: int
    upserts: list[Entry]
    deletes: list[str]
    view: View


def _entries(view: View, keys: list[str]) -> list[Entry]:
    # managedFields is for API clients only: boards are not sent it
    return [
        Entry(
            k, view.records[k].mod_rev, encode_object(without_managed_fields(view.records[k].value))
        )
        for k in keys
    ]


def plan_node_sync(
    backend: Backend, node: str, last_rev: int | None, sent: dict[str, int] | None = None
) -> ViewSync:
    """Resync (``last_rev`` given) or live step (``sent`` membership given).

    Runs in one read transaction so every query sees the same revision."""

    def run(b: Backend) -> ViewSync:
        cur = b.current_rev()
        now = compute_view(b, node)
        if sent is not None:
            ups, dels = diff_views(sent, now.membership())
            return ViewSync("live", cur, _entries(now, ups), dels, now)
        assert last_rev is not None
        if plan_resync(last_rev, cur, b.compact_rev()) == "delta":
            try:
                then = compute_view(b, node, last_rev)
            except Compacted:
                pass
            else:
                ups, dels = diff_views(then.membership(), now.membership())
                return ViewSync("delta", cur, _entries(now, ups), dels, now)
        return ViewSync("snapshot", cur, _entries(now, sorted(now.records)), [], now)

    return backend.read(run)
