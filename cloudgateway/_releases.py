"""Agent releases kept by the gateway: each one's signed manifest and its
pieces (``edgeproto.upgrade.CHUNK_SIZE`` bytes each), so that any replica can
serve any piece to any board.

A release is named by its archive's SHA-256. It is stored beside the object
store, not in it: pieces are large, written once and never watched, so they
stay out of the revisioned history, the store's watch and its subscribers
(the hub, the controllers, API watches), which would otherwise each see every
piece go by. Two backends, chosen by the store the gateway runs on:

- ``SqliteReleaseStorage`` (the embedded store): ``DATA_DIR/releases.db``, a
  SQLite file of its own (WAL), one row per release and one BLOB per piece;
- ``etcd._releases.EtcdReleaseStorage`` (replicas): raw etcd keys under a root *beside* the
  store's (``/edgeflock-releases/`` for ``/edgeflock/``), so neither the
  store's watch (``{root}o/``) nor the coordinator's (``{root}``) carries
  them: ``r/<sha>`` a small JSON summary, ``m/<sha>`` the manifest,
  ``s/<sha>`` the signature, ``p/<sha>/<index>`` each piece, ``c/<sha>`` the
  mark that every piece is there.

Nothing here holds more than one piece at a time, and a manifest (about 70
bytes per piece) is the largest value read. ``Releases`` is the async facade
the API, the hub and the upgrade controller share; every piece written is
checked against the manifest first.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

from edgeproto.upgrade import (
    ReleaseManifest,
    UpgradeError,
    decode_manifest,
    verify_manifest,
)

from ._errors import GatewayError
from ._store import Store, StoreError, Unavailable

log = logging.getLogger(__name__)

__all__ = [
    "ReleaseError",
    "ReleaseInfo",
    "ReleaseStorage",
    "Releases",
    "SqliteReleaseStorage",
    "open_release_storage",
]

T = TypeVar("T")
_CACHED_MANIFESTS = 16  # decoded manifests kept (the releases boards are fetching)


class ReleaseError(GatewayError):
    """A release request that cannot be done as asked: ``code`` is the HTTP
    status (400 bad input, 404 unknown release, 409 another manifest)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class ReleaseInfo:
    sha256: str
    version: str
    arch: str
    size: int
    pieces: int  # how many the manifest names
    present: int  # how many are stored
    created: str  # the manifest's

    @property
    def complete(self) -> bool:
        return self.present >= self.pieces

    @property
    def missing(self) -> int:
        return max(0, self.pieces - self.present)


def _summary(m: ReleaseManifest) -> dict[str, Any]:
    return {
        "version": m.version,
        "arch": m.arch,
        "size": m.size,
        "pieces": len(m.chunks),
        "created": m.created,
    }


def _info(sha: str, summary: dict[str, Any], present: int) -> ReleaseInfo:
    return ReleaseInfo(
        sha256=sha,
        version=str(summary["version"]),
        arch=str(summary["arch"]),
        size=int(summary["size"]),
        pieces=int(summary["pieces"]),
        present=present,
        created=str(summary["created"]),
    )


class ReleaseStorage(Protocol):
    """Blocking, thread-safe storage of releases. Failures are ``StoreError``
    (``Unavailable`` when trying again may work)."""

    def create(self, m: ReleaseManifest, manifest: bytes, signature: bytes) -> bool:
        """Store a release's manifest and signature; False if it was there
        already with the same manifest (``ReleaseError`` 409 if another)."""
        ...

    def manifest(self, sha: str) -> tuple[bytes, bytes] | None:
        """The release's (manifest, signature), None if unknown."""
        ...

    def put_piece(self, sha: str, index: int, data: bytes) -> None:
        """Store one (checked) piece; ``ReleaseError`` 404 if the release is gone."""
        ...

    def piece(self, sha: str, index: int) -> bytes | None: ...

    def present(self, sha: str) -> builtins.list[int]:
        """Indices of the pieces stored, ascending."""
        ...

    def count(self, sha: str) -> int:
        """How many pieces are stored."""
        ...

    def mark_complete(self, sha: str) -> None: ...

    def is_complete(self, sha: str) -> bool: ...

    def list(self) -> builtins.list[ReleaseInfo]: ...

    def delete(self, sha: str) -> bool:
        """Forget the release and its pieces; False if it was unknown."""
        ...

    def close(self) -> None: ...


# ---- the embedded backend ----------------------------------------------------------

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS release(
    sha TEXT PRIMARY KEY,
    summary TEXT NOT NULL,
    manifest BLOB NOT NULL,
    signature BLOB NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS piece(
    sha TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (sha, idx)
);
"""


class SqliteReleaseStorage:
    """Releases in a SQLite file of their own (the embedded store's data dir)."""

    def __init__(self, path: Path) -> None:
        import apsw

        self._apsw = apsw
        self.path = path
        self._lock = threading.Lock()
        try:
            self._conn = apsw.Connection(str(path))
            self._conn.set_busy_timeout(5000)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            with self._conn:
                self._conn.execute(_SQLITE_SCHEMA)
        except apsw.Error as exc:
            raise StoreError(f"cannot open the release store {path}: {exc}") from exc

    def _run(self, what: str, fn: Callable[[Any], T]) -> T:
        apsw = self._apsw
        with self._lock:
            try:
                return fn(self._conn)
            except (apsw.BusyError, apsw.LockedError, apsw.FullError, apsw.IOError) as exc:
                raise Unavailable(f"release store: {what}: {exc}") from exc
            except apsw.Error as exc:
                raise StoreError(f"release store: {what}: {exc}") from exc

    def create(self, m: ReleaseManifest, manifest: bytes, signature: bytes) -> bool:
        def go(c: Any) -> bool:
            with c:
                row = c.execute(
                    "SELECT manifest FROM release WHERE sha = ?", (m.sha256,)
                ).fetchone()
                if row is not None:
                    if bytes(row[0]) != manifest:
                        raise ReleaseError(409, _other_manifest(m.sha256))
                    return False
                c.execute(
                    "INSERT INTO release(sha, summary, manifest, signature) VALUES (?, ?, ?, ?)",
                    (m.sha256, json.dumps(_summary(m)), manifest, signature),
                )
                return True

        return self._run("create", go)

    def manifest(self, sha: str) -> tuple[bytes, bytes] | None:
        def go(c: Any) -> tuple[bytes, bytes] | None:
            row = c.execute(
                "SELECT manifest, signature FROM release WHERE sha = ?", (sha,)
            ).fetchone()
            return None if row is None else (bytes(row[0]), bytes(row[1]))

        return self._run("read", go)

    def put_piece(self, sha: str, index: int, data: bytes) -> None:
        def go(c: Any) -> None:
            with c:
                if c.execute("SELECT 1 FROM release WHERE sha = ?", (sha,)).fetchone() is None:
                    raise ReleaseError(404, f'release "{sha}" not found')
                c.execute(
                    "INSERT OR REPLACE INTO piece(sha, idx, data) VALUES (?, ?, ?)",
                    (sha, index, data),
                )

        self._run("write piece", go)

    def piece(self, sha: str, index: int) -> bytes | None:
        def go(c: Any) -> bytes | None:
            row = c.execute(
                "SELECT data FROM piece WHERE sha = ? AND idx = ?", (sha, index)
            ).fetchone()
            return None if row is None else bytes(row[0])

        return self._run("read piece", go)

    def present(self, sha: str) -> builtins.list[int]:
        return self._run(
            "list pieces",
            lambda c: [
                int(r[0])
                for r in c.execute("SELECT idx FROM piece WHERE sha = ? ORDER BY idx", (sha,))
            ],
        )

    def count(self, sha: str) -> int:
        return self._run(
            "count pieces",
            lambda c: int(
                c.execute("SELECT count(*) FROM piece WHERE sha = ?", (sha,)).fetchone()[0]
            ),
        )

    def mark_complete(self, sha: str) -> None:
        def go(c: Any) -> None:
            with c:
                c.execute("UPDATE release SET complete = 1 WHERE sha = ?", (sha,))

        self._run("mark complete", go)

    def is_complete(self, sha: str) -> bool:
        def go(c: Any) -> bool:
            row = c.execute("SELECT complete FROM release WHERE sha = ?", (sha,)).fetchone()
            return bool(row and row[0])

        return self._run("read", go)

    def list(self) -> builtins.list[ReleaseInfo]:
        def go(c: Any) -> builtins.list[ReleaseInfo]:
            rows = c.execute(
                "SELECT sha, summary, (SELECT count(*) FROM piece WHERE piece.sha = release.sha) "
                "FROM release ORDER BY sha"
            ).fetchall()
            return [_info(sha, json.loads(summary), int(n)) for sha, summary, n in rows]

        return self._run("list", go)

    def delete(self, sha: str) -> bool:
        def go(c: Any) -> bool:
            with c:
                c.execute("DELETE FROM piece WHERE sha = ?", (sha,))
                c.execute("DELETE FROM release WHERE sha = ?", (sha,))
                return bool(c.changes())

        return self._run("delete", go)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_release_storage(store: Store, data_dir: Path) -> ReleaseStorage:
    """The release storage beside ``store``: on etcd, keys beside the store's
    root (same client); else ``data_dir/releases.db``."""
    backend = store.backend
    client = getattr(backend, "client", None)
    root = getattr(backend, "root", None)
    if client is not None and isinstance(root, str):
        from .etcd._releases import EtcdReleaseStorage, releases_root

        return EtcdReleaseStorage(client, releases_root(root))
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return SqliteReleaseStorage(data_dir / "releases.db")


def _other_manifest(sha: str) -> str:
    return (
        f'release "{sha}" already exists with another manifest; '
        "upload the remaining pieces against it, or delete it first"
    )


# ---- the async facade -----------------------------------------------------------------


class Releases:
    """What the API, the hub and the upgrade controller use. Blocking storage
    calls run in worker threads (a few at once)."""

    def __init__(self, storage: ReleaseStorage, *, release_key: bytes | None = None) -> None:
        """``release_key``: the fleet's release public key (PEM); when given, a
        release whose signature it does not verify is refused at upload."""
        self.storage = storage
        self.release_key = release_key
        self._limiter = trio.CapacityLimiter(4)
        self._manifests: OrderedDict[str, tuple[ReleaseManifest, bytes, bytes]] = OrderedDict()
        self._complete: set[str] = set()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def create(self, manifest: bytes, signature: bytes) -> tuple[ReleaseInfo, bool]:
        """Store a new release (its manifest decodes; its signature verifies
        with ``release_key`` if one is set). True if created, False if it
        existed with this very manifest."""
        try:
            m = decode_manifest(manifest)
        except UpgradeError as exc:
            raise ReleaseError(400, f"the manifest does not decode: {exc}") from None
        if not signature or len(signature) > 1024:
            raise ReleaseError(400, "the signature is missing or too long")
        if self.release_key is not None:
            try:
                await self._call(verify_manifest, self.release_key, manifest, signature)
            except UpgradeError as exc:
                raise ReleaseError(
                    400, f"the signature does not verify with the gateway's release key: {exc}"
                ) from None
        created = await self._call(self.storage.create, m, manifest, signature)
        return await self.info(m.sha256), created

    async def manifest(self, sha: str) -> tuple[ReleaseManifest, bytes, bytes] | None:
        """(decoded, canonical bytes, signature), None if unknown."""
        hit = self._manifests.get(sha)
        if hit is not None:
            self._manifests.move_to_end(sha)
            return hit
        stored = await self._call(self.storage.manifest, sha)
        if stored is None:
            return None
        try:
            m = decode_manifest(stored[0])
        except UpgradeError as exc:
            raise StoreError(f"release {sha}: the stored manifest is damaged: {exc}") from exc
        self._manifests[sha] = (m, stored[0], stored[1])
        while len(self._manifests) > _CACHED_MANIFESTS:
            self._manifests.popitem(last=False)
        return self._manifests[sha]

    async def _need(self, sha: str) -> ReleaseManifest:
        got = await self.manifest(sha)
        if got is None:
            raise ReleaseError(404, f'release "{sha}" not found')
        return got[0]

    async def put_piece(self, sha: str, index: int, data: bytes) -> ReleaseInfo:
        """Store piece ``index`` after checking it against the manifest; the
        release's state after it."""
        m = await self._need(sha)
        if not 0 <= index < len(m.chunks):
            raise ReleaseError(
                400,
                f"piece {index} is out of range: release {sha} has pieces 0-{len(m.chunks) - 1}",
            )
        _, length = m.chunk_range(index)
        if len(data) != length:
            raise ReleaseError(
                400, f"piece {index} has {len(data)} bytes; the manifest says {length}"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != m.chunks[index]:
            raise ReleaseError(
                400,
                f"piece {index} does not match the manifest: sha256 {digest}, "
                f"expected {m.chunks[index]}",
            )
        await self._call(self.storage.put_piece, sha, index, data)
        present = await self._call(self.storage.count, sha)
        if present >= len(m.chunks) and sha not in self._complete:
            await self._call(self.storage.mark_complete, sha)
            self._complete.add(sha)
            log.info("release %s (%s, %s) is complete", sha, m.version, m.arch)
        return ReleaseInfo(sha, m.version, m.arch, m.size, len(m.chunks), present, m.created)

    async def missing(self, sha: str) -> builtins.list[int]:
        m = await self._need(sha)
        have = set(await self._call(self.storage.present, sha))
        return [i for i in range(len(m.chunks)) if i not in have]

    async def info(self, sha: str) -> ReleaseInfo:
        m = await self._need(sha)
        present = await self._call(self.storage.count, sha)
        return ReleaseInfo(sha, m.version, m.arch, m.size, len(m.chunks), present, m.created)

    async def complete(self, sha: str) -> bool:
        if sha in self._complete:
            return True
        if await self._call(self.storage.is_complete, sha):
            self._complete.add(sha)
            return True
        return False

    async def piece(self, sha: str, index: int) -> bytes | None:
        return await self._call(self.storage.piece, sha, index)

    async def list(self) -> builtins.list[ReleaseInfo]:
        return await self._call(self.storage.list)

    async def delete(self, sha: str) -> bool:
        self._manifests.pop(sha, None)
        self._complete.discard(sha)
        return await self._call(self.storage.delete, sha)

    async def find(self, version: str, arch: str) -> ReleaseInfo | None:
        """The complete release of ``version`` for ``arch`` (the newest by its
        manifest's ``created`` if several were pushed), None if there is none."""
        found = [
            r for r in await self.list() if r.version == version and r.arch == arch and r.complete
        ]
        found.sort(key=lambda r: (r.created, r.sha256))
        return found[-1] if found else None

    def close(self) -> None:
        self.storage.close()
