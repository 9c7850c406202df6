"""Garbage collection by ``metadata.ownerReferences``, as Kubernetes' garbage
collector does it, level-triggered over the store.

- A dependent none of whose owners exists any more (by uid: an owner deleted
  and created again under the same name is another owner) is deleted;
  references to missing owners beside a live one are removed.
- Deleting an owner with ``propagationPolicy``:
  ``Background`` (the default): the API deletes it at once, this collector
  then deletes its dependents.
  ``Foreground``: the API marks it (``deletionTimestamp`` and the
  ``foregroundDeletion`` finalizer); this collector deletes its dependents
  and, once none with ``blockOwnerDeletion: true`` is left, the owner.
  ``Orphan``: the API marks it with the ``orphan`` finalizer; this collector
  removes the references to it from its dependents (which stay) and then
  deletes it.
- An object whose ``deletionTimestamp`` is set and whose finalizers are all
  gone is deleted (a user removing the last finalizer).

Dependents of an owner are found through an index (owner uid → keys) this
collector keeps from the events it sees, and completed from the store by a
full listing when an owner is deleted with Foreground or Orphan (rare, and an
index is only as good as the events that fed it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import edgeproto

from .._store import UNCHANGED, NotFound, Record, Store

log = logging.getLogger(__name__)

__all__ = [
    "FOREGROUND",
    "ORPHAN",
    "GarbageCollector",
    "Propagation",
    "mark_for_deletion",
]

FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
Propagation = Literal["Background", "Foreground", "Orphan"]

# Never collected, never owners worth watching: events (they only say what
# happened, and there are many).
_SKIP = frozenset({"events"})


def _meta(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    m = value.get("metadata") if value else None
    return m if isinstance(m, Mapping) else {}


def _refs(value: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    refs = _meta(value).get("ownerReferences")
    return [r for r in refs if isinstance(r, Mapping)] if isinstance(refs, list) else []


def _finalizers(value: Mapping[str, Any]) -> list[str]:
    f = _meta(value).get("finalizers")
    return [x for x in f if isinstance(x, str)] if isinstance(f, list) else []


def mark_for_deletion(value: dict[str, Any], policy: Propagation, now: str) -> Any:
    """The object as the API writes it for a Foreground or Orphan delete:
    ``deletionTimestamp`` (kept if set already) and the policy's finalizer;
    ``UNCHANGED`` when both are there already."""
    fin = FOREGROUND if policy == "Foreground" else ORPHAN
    meta = value.get("metadata") or {}
    finals = [x for x in meta.get("finalizers") or [] if isinstance(x, str)]
    if meta.get("deletionTimestamp") and fin in finals:
        return UNCHANGED
    new = dict(value)
    nmeta = dict(meta)
    nmeta.setdefault("deletionTimestamp", now)
    nmeta.setdefault("deletionGracePeriodSeconds", 0)
    if fin not in finals:
        finals.append(fin)
    nmeta["finalizers"] = finals
    new["metadata"] = nmeta
    return new


class GarbageCollector:
    """The collector, run by ``run_controllers``. ``resources``: the store
    resources it watches (every kind but Events by default; a new kind in
    ``edgeproto.RESOURCES`` is watched without a change here)."""

    name = "garbage-collector"

    def __init__(self, store: Store, resources: Iterable[str] | None = None) -> None:
        self._store = store
        names = (
            [r.name for r in edgeproto.RESOURCES if r.name not in _SKIP]
            if resources is None
            else list(resources)
        )
        self.prefixes = tuple(f"{n}/" for n in names)
        self._dependents: dict[str, set[str]] = {}  # owner uid -> dependent keys
        self.deleted = 0
        self.orphaned = 0

    # ---- event mapping -------------------------------------------------------------

    def keys_for(
        self, key: str, value: Mapping[str, Any] | None, prev: Mapping[str, Any] | None
    ) -> Iterable[str]:
        out: list[str] = []
        new_uids = {str(r.get("uid")) for r in _refs(value)}
        old_uids = {str(r.get("uid")) for r in _refs(prev)}
        for uid in old_uids - new_uids:
            deps = self._dependents.get(uid)
            if deps is not None:
                deps.discard(key)
                if not deps:
                    del self._dependents[uid]
        for uid in new_uids:
            self._dependents.setdefault(uid, set()).add(key)
        if value is None:
            # gone: its dependents may now be garbage; an owner waiting for its
            # dependents may now go
            gone = _meta(prev).get("uid")
            if isinstance(gone, str):
                out.extend(self._dependents.get(gone, ()))
            _, ns, _ = edgeproto.split_key(key)
            out.extend(k for k in (self._owner_key(r, ns) for r in _refs(prev)) if k)
            return out
        if _meta(value).get("deletionTimestamp"):
            out.append(key)
        if new_uids and (prev is None or _refs(value) != _refs(prev)):
            out.append(key)
        return out

    @staticmethod
    def _owner_key(ref: Mapping[str, Any], ns: str) -> str | None:
        name = ref.get("name")
        try:
            res = edgeproto.resource_by_kind(str(ref.get("kind", "")))
        except edgeproto.ProtocolError:
            return None
        if not isinstance(name, str) or not name:
            return None
        return edgeproto.make_key(res.name, ns if res.namespaced else "", name)

    # ---- reconcile ------------------------------------------------------------------

    async def reconcile(self, key: str) -> float | None:
        try:
            rec = await self._store.get(key)
        except NotFound:
            return None
        if _meta(rec.value).get("deletionTimestamp"):
            again = await self._finish_deletion(rec)
            if again is not None:
                return again
            try:
                rec = await self._store.get(key)
            except NotFound:
                return None
        if _refs(rec.value):
            await self._check_owners(rec)
        return None

    async def _owner_state(
        self, ref: Mapping[str, Any], ns: str
    ) -> Literal["solid", "dangling", "waiting"]:
        key = self._owner_key(ref, ns)
        if key is None:
            return "solid"  # a kind this gateway does not store: cannot tell, leave it
        try:
            owner = await self._store.get(key)
        except NotFound:
            return "dangling"
        if _meta(owner.value).get("uid") != ref.get("uid"):
            return "dangling"
        if _meta(owner.value).get("deletionTimestamp") and FOREGROUND in _finalizers(owner.value):
            return "waiting"
        return "solid"

    async def _check_owners(self, rec: Record) -> None:
        _, ns, _ = edgeproto.split_key(rec.key)
        states: dict[str, str] = {}
        for ref in _refs(rec.value):
            states[str(ref.get("uid"))] = await self._owner_state(ref, ns)
        solid = [u for u, s in states.items() if s == "solid"]
        gone = {u for u, s in states.items() if s != "solid"}
        if not gone:
            return
        if solid:
            await self._remove_refs(rec.key, gone, expect=rec.mod_rev)
            return
        waiting = any(s == "waiting" for s in states.values())
        uid = _meta(rec.value).get("uid")
        if waiting and isinstance(uid, str) and self._dependents.get(uid):
            # its owner waits for its dependents: so does it, for its own
            await self._mark(rec, "Foreground")
            return
        log.info("garbage collector: deleting %s (its owners are gone)", rec.key)
        await self._store.delete(rec.key, expect_rev=rec.mod_rev)
        self.deleted += 1

    async def _mark(self, rec: Record, policy: Propagation) -> None:
        now = edgeproto.rfc3339(time.time())
        await self._store.modify(
            rec.key,
            lambda cur: mark_for_deletion(cur.value, policy, now),
            expect_rev=rec.mod_rev,
        )

    async def _remove_refs(self, key: str, uids: set[str], *, expect: int | None = None) -> bool:
        """Drop references to ``uids`` from ``key``'s ownerReferences."""

        def edit(cur: Record) -> Any:
            refs = _refs(cur.value)
            keep = [r for r in refs if str(r.get("uid")) not in uids]
            if len(keep) == len(refs):
                return UNCHANGED
            new = dict(cur.value)
            meta = dict(new.get("metadata") or {})
            if keep:
                meta["ownerReferences"] = keep
            else:
                meta.pop("ownerReferences", None)
            new["metadata"] = meta
            return new

        try:
            ev = await self._store.modify(key, edit, expect_rev=expect)
        except NotFound:
            return False
        return ev is not None

    async def _dependents_of(self, uid: str) -> list[Record]:
        """Every live object that names ``uid`` as an owner: the index's keys
        and a listing of every watched resource (an index fed by events may
        miss what changed while the collector was not listening)."""
        found: dict[str, Record] = {}
        for prefix in self.prefixes:
            records, _ = await self._store.list(prefix)
            for rec in records:
                if any(str(r.get("uid")) == uid for r in _refs(rec.value)):
                    found[rec.key] = rec
                    self._dependents.setdefault(uid, set()).add(rec.key)
        return list(found.values())

    async def _finish_deletion(self, rec: Record) -> float | None:
        """An object marked for deletion: orphan or delete its dependents as
        its finalizers say, then drop those finalizers, then delete it when
        none is left."""
        finals = _finalizers(rec.value)
        uid = str(_meta(rec.value).get("uid"))
        if ORPHAN in finals:
            for dep in await self._dependents_of(uid):
                if await self._remove_refs(dep.key, {uid}):
                    self.orphaned += 1
            await self._drop_finalizer(rec.key, ORPHAN)
        elif FOREGROUND in finals:
            blocking = 0
            for dep in await self._dependents_of(uid):
                ref = next(r for r in _refs(dep.value) if str(r.get("uid")) == uid)
                if ref.get("blockOwnerDeletion") is True:
                    blocking += 1
                if _meta(dep.value).get("deletionTimestamp"):
                    continue  # on its way (its own dependents first)
                dep_uid = _meta(dep.value).get("uid")
                others = [r for r in _refs(dep.value) if str(r.get("uid")) != uid]
                if others:
                    # it has other owners: only our reference goes
                    if ref.get("blockOwnerDeletion") is True:
                        blocking -= 1
                    await self._remove_refs(dep.key, {uid})
                    continue
                try:
                    if isinstance(dep_uid, str) and self._dependents.get(dep_uid):
                        await self._mark(dep, "Foreground")
                    else:
                        await self._store.delete(dep.key, expect_rev=dep.mod_rev)
                        self.deleted += 1
                        if ref.get("blockOwnerDeletion") is True:
                            blocking -= 1
                except NotFound:
                    if ref.get("blockOwnerDeletion") is True:
                        blocking -= 1
            if blocking > 0:
                return 1.0  # dependents still going; their deletions queue us too
            await self._drop_finalizer(rec.key, FOREGROUND)
        try:
            cur = await self._store.get(rec.key)
        except NotFound:
            return None
        if _meta(cur.value).get("deletionTimestamp") and not _finalizers(cur.value):
            log.info("garbage collector: deleting %s (no finalizer left)", rec.key)
            await self._store.delete(rec.key, expect_rev=cur.mod_rev)
            self.deleted += 1
        return None

    async def _drop_finalizer(self, key: str, fin: str) -> None:
        def edit(cur: Record) -> Any:
            finals = _finalizers(cur.value)
            if fin not in finals:
                return UNCHANGED
            new = dict(cur.value)
            meta = dict(new.get("metadata") or {})
            meta["finalizers"] = [f for f in finals if f != fin]
            if not meta["finalizers"]:
                del meta["finalizers"]
            new["metadata"] = meta
            return new

        await self._store.modify(key, edit)
