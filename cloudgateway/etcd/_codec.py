"""How the store lays its records out in etcd, and how it reads them back.

Under a root (``/edgeflock/`` by default):

- ``{root}o/{key}``: the object, as a JSON envelope
  ``{"n": node, "s": spec_rev, "v": object}``. etcd holds the object's
  ``mod_rev`` (mod_revision) and ``create_rev`` (create_revision) natively;
  the envelope adds what etcd cannot: the node the object is placed on and its
  ``spec_rev``. A write that changes the spec cannot know its own revision
  before it commits, so it stores ``"s": null``, meaning "spec_rev is this
  version's mod_rev"; a status-only write stores the previous spec_rev. The
  object is stored without ``metadata.resourceVersion`` (that is mod_revision).
- ``{root}n/{node}\\x00{key}``: the node index, an empty value written and
  deleted in the same transaction as the object, so a node's view at a
  revision is a range over its index at that revision. Keys and node names
  cannot hold NUL, so the separator is unambiguous.
- ``{root}compacted``: the compaction horizon the store's ``compact`` set;
- ``{root}rev``: an empty marker every store write also puts, so its
  mod_revision is the revision of the store's last write (etcd's revision
  moves for other keys too). Reading history up to a revision stops at it.

Nothing here does I/O; it works on the client's protobuf messages.
"""

from __future__ import annotations

import json
from typing import Any

from .._backend import Event, Record, StoreError, dump, with_rv

__all__ = ["Layout", "envelope"]


def envelope(obj: dict[str, Any], key: str, node: str | None, spec_rev: int | None) -> bytes:
    """The stored form of ``obj`` (its resourceVersion left out)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "resourceVersion" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}
    body = dump(obj, key)
    head = json.dumps({"n": node, "s": spec_rev}, separators=(",", ":"))
    return (head[:-1] + ',"v":' + body + "}").encode("utf-8")


class Layout:
    """Key names under one root, and decoding of what etcd returns."""

    def __init__(self, root: str) -> None:
        if not root or "\x00" in root:
            raise StoreError(f"bad etcd root {root!r}")
        self.root = root
        raw = root.encode("utf-8")
        self.objects = raw + b"o/"
        self.index = raw + b"n/"
        self.compacted = raw + b"compacted"
        self.marker = raw + b"rev"
        # what a history watch covers: the objects and the marker, not the index
        self.history = (self.objects, self.marker + b"\x00")

    def obj(self, key: str) -> bytes:
        return self.objects + key.encode("utf-8")

    def node_key(self, node: str, key: str) -> bytes:
        return self.index + node.encode("utf-8") + b"\x00" + key.encode("utf-8")

    def node_prefix(self, node: str, prefix: str) -> bytes:
        return self.index + node.encode("utf-8") + b"\x00" + prefix.encode("utf-8")

    def key_of_index(self, raw: bytes) -> str:
        _, _, key = raw[len(self.index) :].partition(b"\x00")
        return key.decode("utf-8")

    def key_of(self, raw: bytes) -> str:
        return raw[len(self.objects) :].decode("utf-8")

    def record(self, kv: Any) -> Record:
        """The record an object's KeyValue holds."""
        key = self.key_of(kv.key)
        try:
            env = json.loads(kv.value)
            obj = env["v"]
            node = env["n"]
            spec_rev = env["s"]
            if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
                raise TypeError("not an object with metadata")
            if node is not None and not isinstance(node, str):
                raise TypeError("node is not a string")
            if spec_rev is not None and type(spec_rev) is not int:
                raise TypeError("spec_rev is not an integer")
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{key}: stored value is not a store record: {exc}", key=key) from None
        mod_rev = int(kv.mod_revision)
        obj["metadata"]["resourceVersion"] = str(mod_rev)
        return Record(key, obj, mod_rev, int(kv.create_revision), spec_rev or mod_rev, node)

    def event(self, ev: Any, delete: int) -> Event:
        """The store event of an etcd watch event (``delete`` is etcd's DELETE
        type); the watch must ask for prev_kv."""
        prev = self.record(ev.prev_kv) if ev.HasField("prev_kv") else None
        if ev.type == delete:
            key = self.key_of(ev.kv.key)
            rev = int(ev.kv.mod_revision)
            if prev is not None:
                value = with_rv(prev.value, rev)
                dead = Record(key, value, rev, prev.create_rev, prev.spec_rev, prev.node)
            else:  # history before it compacted away: say what we know
                _, _, name = key.rpartition("/")
                value = {"metadata": {"name": name, "resourceVersion": str(rev)}}
                dead = Record(key, value, rev, rev, rev, None)
            return Event("DELETED", rev, key, dead, prev)
        rec = self.record(ev.kv)
        if rec.create_rev == rec.mod_rev:
            return Event("ADDED", rec.mod_rev, rec.key, rec, None)
        return Event("MODIFIED", rec.mod_rev, rec.key, rec, prev)
