"""Agent releases on etcd (replicas): raw keys beside the store's root, so
neither the store's watch nor the coordinator's carries a piece. The layout
is described in ``cloudgateway._releases``."""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable
from typing import Any, TypeVar

from edgeproto.upgrade import ReleaseManifest

from .._releases import ReleaseError, ReleaseInfo, _info, _other_manifest, _summary
from .._store import StoreError, Unavailable

__all__ = ["EtcdReleaseStorage", "releases_root"]

T = TypeVar("T")

# ---- etcd -----------------------------------------------------------------------------


def releases_root(store_root: str) -> str:
    """Where releases live beside a store under ``store_root`` (``/edgeflock/``
    → ``/edgeflock-releases/``): outside the store's and the coordinator's
    ranges, so no watch of theirs carries a piece."""
    return store_root.rstrip("/") + "-releases/"


class EtcdReleaseStorage:
    """Releases as raw keys in the fleet's etcd, beside the store."""

    def __init__(self, client: Any, root: str) -> None:
        from ._client import pb

        self._client = client
        self._pb = pb
        self.root = root
        self._raw = root.encode()

    def _key(self, part: str, sha: str, index: int | None = None) -> bytes:
        key = f"{part}/{sha}" if index is None else f"{part}/{sha}/{index:05d}"
        return self._raw + key.encode()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        from ._client import EtcdError, EtcdUnavailable

        try:
            return fn()
        except EtcdUnavailable as exc:
            raise Unavailable(f"release store: {what}: {exc}") from exc
        except EtcdError as exc:
            raise StoreError(f"release store: {what}: {exc}") from exc

    def _get(self, key: bytes) -> bytes | None:
        resp = self._call("read", lambda: self._client.range(key))
        return bytes(resp.kvs[0].value) if resp.kvs else None

    def _put_op(self, key: bytes, value: bytes) -> Any:
        pb = self._pb
        return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))

    def _exists(self, key: bytes) -> Any:
        pb = self._pb
        return pb.Compare(
            key=key, target=pb.Compare.CREATE, result=pb.Compare.GREATER, create_revision=0
        )

    def create(self, m: ReleaseManifest, manifest: bytes, signature: bytes) -> bool:
        pb = self._pb
        summary = self._key("r", m.sha256)
        absent = pb.Compare(
            key=summary, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, create_revision=0
        )
        ops = [
            self._put_op(self._key("m", m.sha256), manifest),
            self._put_op(self._key("s", m.sha256), signature),
            self._put_op(summary, json.dumps(_summary(m)).encode()),
        ]
        resp = self._call("create", lambda: self._client.txn([absent], ops))
        if resp.succeeded:
            return True
        if self._get(self._key("m", m.sha256)) != manifest:
            raise ReleaseError(409, _other_manifest(m.sha256))
        return False

    def manifest(self, sha: str) -> tuple[bytes, bytes] | None:
        pb = self._pb
        ops = [
            pb.RequestOp(request_range=pb.RangeRequest(key=self._key("m", sha))),
            pb.RequestOp(request_range=pb.RangeRequest(key=self._key("s", sha))),
        ]
        resp = self._call("read", lambda: self._client.txn([], ops))
        m, s = (r.response_range.kvs for r in resp.responses)
        if not m or not s:
            return None
        return bytes(m[0].value), bytes(s[0].value)

    def put_piece(self, sha: str, index: int, data: bytes) -> None:
        resp = self._call(
            "write piece",
            lambda: self._client.txn(
                [self._exists(self._key("r", sha))],
                [self._put_op(self._key("p", sha, index), data)],
            ),
        )
        if not resp.succeeded:
            raise ReleaseError(404, f'release "{sha}" not found')

    def piece(self, sha: str, index: int) -> bytes | None:
        return self._get(self._key("p", sha, index))

    def _pieces_range(self, sha: str) -> tuple[bytes, bytes]:
        from ._client import prefix_end

        lo = self._key("p", sha) + b"/"
        return lo, prefix_end(lo)

    def present(self, sha: str) -> builtins.list[int]:
        lo, hi = self._pieces_range(sha)
        resp = self._call("list pieces", lambda: self._client.range(lo, hi, keys_only=True))
        return sorted(int(kv.key[len(lo) :]) for kv in resp.kvs)

    def count(self, sha: str) -> int:
        lo, hi = self._pieces_range(sha)
        resp = self._call("count pieces", lambda: self._client.range(lo, hi, count_only=True))
        return int(resp.count)

    def mark_complete(self, sha: str) -> None:
        self._call(
            "mark complete",
            lambda: self._client.txn(
                [self._exists(self._key("r", sha))], [self._put_op(self._key("c", sha), b"")]
            ),
        )

    def is_complete(self, sha: str) -> bool:
        return self._get(self._key("c", sha)) is not None

    def list(self) -> builtins.list[ReleaseInfo]:
        from ._client import prefix_end

        lo = self._raw + b"r/"
        resp = self._call("list", lambda: self._client.range(lo, prefix_end(lo)))
        out = []
        for kv in resp.kvs:
            sha = kv.key[len(lo) :].decode()
            out.append(_info(sha, json.loads(kv.value), self.count(sha)))
        return out

    def delete(self, sha: str) -> bool:
        pb = self._pb
        lo, hi = self._pieces_range(sha)
        ops = [
            pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=self._key(p, sha)))
            for p in ("r", "m", "s", "c")
        ]
        ops.append(pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=lo, range_end=hi)))
        resp = self._call("delete", lambda: self._client.txn([], ops))
        return bool(resp.responses[0].response_delete_range.deleted)

    def close(self) -> None:
        pass  # the client is the store's
