"""Downloading one release over the hub session, piece by piece.

The release's manifest comes first (``release-manifest``); its Ed25519
signature is checked with the board's own release key before anything in it
is believed. Then the pieces (``release-chunk``), at most ``WINDOW`` requests
in flight, each checked against the manifest's SHA-256 for it and written at
its offset into ``DIR/<sha>.part``. Nothing of the release is held in memory
but the pieces in flight: memory does not grow with the release's size (one
bit of state per piece, 32 bytes of hash per piece).

A download resumes after a disconnect (the pieces received are known) and
after a restart or a power cut: every piece of the ``.part`` file that checks
against the manifest is kept, the others are fetched again. When all pieces
are in, the whole file must match the release's SHA-256 (its name); it is
then renamed ``<sha>.tar``.

Errors are sorted for the caller: ``Transient`` (no session, the gateway busy
or not ready: try again later) and ``Permanent`` (a signature that does not
verify, a piece that fails its hash twice, a manifest that does not match the
assignment, no room: give up on this release, the reason says why).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import trio

from edgeproto import first_leaf
from edgeproto.upgrade import (
    CHUNK_SIZE,
    REQUEST_CHUNK,
    REQUEST_MANIFEST,
    WINDOW,
    Assignment,
    UpgradeError,
    decode_manifest,
)

from ._errors import AgentError
from ._requests import HubUnavailable, RequestError

log = logging.getLogger(__name__)

__all__ = ["Download", "Permanent", "Release", "Transient", "fetch_release"]

RequestFn = Callable[..., Awaitable[dict[str, Any]]]  # HubClient.request
_HASH_READ = 1 << 20  # bytes read at a time for the whole-file hash
_TRANSIENT_CODES = frozenset({403, 404, 429, 503})  # the gateway not ready (or our view stale)


class Transient(AgentError):
    """Try again later (with back-off)."""


class Permanent(AgentError):
    """This release cannot be had on this board; the message says why."""


@dataclass(frozen=True, slots=True)
class Release:
    """What a verified manifest says, kept small: the piece hashes as one
    bytes object (32 bytes a piece) rather than a tuple of hex strings."""

    version: str
    arch: str
    size: int
    sha256: str
    digests: bytes

    @property
    def count(self) -> int:
        return len(self.digests) // 32

    def digest(self, index: int) -> bytes:
        return self.digests[index * 32 : index * 32 + 32]

    def piece(self, index: int) -> tuple[int, int]:
        """Offset and length of piece ``index``."""
        start = index * CHUNK_SIZE
        return start, min(CHUNK_SIZE, self.size - start)


async def _call(
    request: RequestFn, op: str, res: str, body: Mapping[str, Any] | None, wait: float
) -> dict[str, Any]:
    try:
        return await request(op, res, body, timeout=wait)
    except HubUnavailable as exc:
        raise Transient(str(exc)) from None
    except RequestError as exc:
        if exc.code in _TRANSIENT_CODES:
            raise Transient(f"the gateway answered {op} with {exc}") from None
        raise Permanent(f"the gateway refused {op} of release {res[:12]}: {exc}") from None


async def fetch_release(
    request: RequestFn, assignment: Assignment, key_pem: bytes, *, wait: float
) -> Release:
    """The assignment's release manifest, its signature verified with
    ``key_pem`` and its contents checked against the assignment and this
    machine. A signature that fails is asked for once more (a fresh copy)
    before the release is given up."""
    sha = assignment.release
    why = ""
    for _attempt in range(2):
        body = await _call(request, REQUEST_MANIFEST, sha, None, wait)
        manifest, signature = body.get("manifest"), body.get("signature")
        if not isinstance(manifest, bytes) or not isinstance(signature, bytes):
            why = "the gateway's answer has no manifest and signature bytes"
            continue
        problem = await verify_signature(key_pem, manifest, signature)
        if problem is not None:
            why = f"release {sha[:12]}: {problem}"
            log.warning("%s", why)
            continue
        try:
            m = decode_manifest(manifest)
        except UpgradeError as exc:
            raise Permanent(f"release {sha[:12]}: signed manifest is unusable: {exc}") from None
        machine = platform.machine()
        if m.sha256 != sha:
            raise Permanent(f"release manifest names {m.sha256[:12]}, the assignment {sha[:12]}")
        if m.version != assignment.version:
            raise Permanent(
                f"release {sha[:12]} is version {m.version}, the job asks for {assignment.version}"
            )
        if m.arch != machine:
            raise Permanent(f"release {sha[:12]} is for {m.arch}, this board is {machine}")
        if m.size != assignment.size:
            raise Permanent(
                f"release {sha[:12]} is {m.size} bytes, the assignment says {assignment.size}"
            )
        digests = b"".join(bytes.fromhex(h) for h in m.chunks)
        return Release(m.version, m.arch, m.size, m.sha256, digests)
    raise Permanent(why)


async def verify_signature(key_pem: bytes, manifest: bytes, signature: bytes) -> str | None:
    """Why ``signature`` is not the release key's signature of ``manifest``
    (None: it is). Checked by ``python -m edgeagent._verify`` in a process of
    its own: ``cryptography`` never becomes part of the agent's memory."""
    proc = await trio.run_process(
        [sys.executable, "-m", "edgeagent._verify"],
        stdin=cbor2.dumps([key_pem, manifest, signature]),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if proc.returncode == 0:
        return None
    text = proc.stderr.decode(errors="replace").strip().splitlines()
    if proc.returncode == 1 and text:
        return text[-1]
    raise Permanent(
        f"the signature check could not run (exit {proc.returncode}): "
        f"{text[-1] if text else 'no output'}"
    )


class Download:
    """One release into ``directory``; ``run`` again after a ``Transient``
    error goes on where it stopped."""

    def __init__(
        self,
        release: Release,
        directory: Path,
        request: RequestFn,
        *,
        window: int = WINDOW,
        timeout: float = 30.0,
    ) -> None:
        self.release = release
        self.part = directory / f"{release.sha256}.part"
        self.tar = directory / f"{release.sha256}.tar"
        self._request = request
        self._window = window
        self._timeout = timeout
        self._have: bytearray | None = None  # 1 for each piece verified in .part
        self._count = 0
        self._io = trio.CapacityLimiter(1)  # one worker thread: no extra malloc arenas
        self.resumed_with = -1  # pieces found good in .part when first run (-1: not yet)
        self.fetched = 0  # pieces received by this object
        self.refetched = 0  # pieces asked for again after failing their hash

    @property
    def have(self) -> int:
        return self._count

    def _scan(self) -> bytearray:
        """Which pieces of an existing ``.part`` check against the manifest."""
        r = self.release
        have = bytearray(r.count)
        try:
            fd = os.open(self.part, os.O_RDONLY)
        except FileNotFoundError:
            return have
        try:
            length = os.fstat(fd).st_size
            for i in range(r.count):
                offset, size = r.piece(i)
                if offset + size > length:
                    break
                data = os.pread(fd, size, offset)
                if len(data) == size and hashlib.sha256(data).digest() == r.digest(i):
                    have[i] = 1
        finally:
            os.close(fd)
        return have

    async def run(self, progress: Callable[[int, int], Awaitable[None]] | None = None) -> Path:
        """Fetch what is missing; the verified ``<sha>.tar``. ``progress(have,
        total)`` is awaited whenever another quarter of the pieces is in."""
        if self.tar.exists():
            await self._check_whole(self.tar)
            return self.tar
        if self._have is None:
            self._have = await trio.to_thread.run_sync(self._scan, limiter=self._io)
            self._count = sum(self._have)
            self.resumed_with = self._count
            if self._count:
                log.info(
                    "release %s: resuming with %d of %d pieces",
                    self.release.sha256[:12],
                    self._count,
                    self.release.count,
                )
        have = self._have
        fd = await trio.to_thread.run_sync(self._open, limiter=self._io)
        try:
            todo = (i for i in range(self.release.count) if not have[i])
            try:
                async with trio.open_nursery() as nursery:
                    for _ in range(min(self._window, self.release.count)):
                        nursery.start_soon(self._worker, fd, todo, progress)
            except BaseExceptionGroup as group:
                for kind in (Permanent, Transient):  # a permanent failure wins
                    if (found := group.subgroup(kind)) is not None:
                        raise first_leaf(found) from None
                raise
            await trio.to_thread.run_sync(os.fsync, fd, limiter=self._io)
        finally:
            os.close(fd)
        await self._check_whole(self.part)
        await trio.to_thread.run_sync(self._finish, limiter=self._io)
        return self.tar

    def _open(self) -> int:
        self.part.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise Permanent(f"cannot write {self.part}: {exc}") from None
        try:
            # Reserve the room now: a card that cannot hold the release says so
            # at once instead of at the last piece.
            os.posix_fallocate(fd, 0, self.release.size)
        except OSError as exc:
            if exc.errno not in (95, 22):  # EOPNOTSUPP, EINVAL: not supported there
                os.close(fd)
                raise Permanent(
                    f"no room for release {self.release.sha256[:12]} "
                    f"({self.release.size} bytes) in {self.part.parent}: {exc.strerror}"
                ) from None
        return fd

    async def _worker(
        self,
        fd: int,
        todo: Iterator[int],
        progress: Callable[[int, int], Awaitable[None]] | None,
    ) -> None:
        assert self._have is not None
        total = self.release.count
        for index in todo:
            await self._piece(fd, index)
            self._have[index] = 1
            before = self._count * 4 // total
            self._count += 1
            if progress is not None and self._count * 4 // total != before:
                await progress(self._count, total)

    async def _piece(self, fd: int, index: int) -> None:
        sha = self.release.sha256
        for attempt in range(2):
            body = await _call(self._request, REQUEST_CHUNK, sha, {"index": index}, self._timeout)
            self.fetched += 1
            data = body.get("data")
            if isinstance(data, bytes) and await trio.to_thread.run_sync(
                self._write_if_good, fd, index, data, limiter=self._io
            ):
                return
            if attempt == 0:
                self.refetched += 1
                log.warning("release %s: piece %d failed its SHA-256 check; again", sha[:12], index)
        raise Permanent(
            f"release {sha[:12]}: piece {index} failed its SHA-256 check twice "
            "(the gateway's copy does not match the signed manifest)"
        )

    def _write_if_good(self, fd: int, index: int, data: bytes) -> bool:
        offset, size = self.release.piece(index)
        if len(data) != size or hashlib.sha256(data).digest() != self.release.digest(index):
            return False
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as exc:
            raise Permanent(f"cannot write {self.part}: {exc.strerror}") from None
        return True

    async def _check_whole(self, path: Path) -> None:
        digest = await trio.to_thread.run_sync(_sha256_of, path, limiter=self._io)
        if digest != self.release.sha256:
            await trio.to_thread.run_sync(self.remove, limiter=self._io)
            raise Permanent(
                f"release {self.release.sha256[:12]}: the whole archive's SHA-256 is "
                f"{digest[:12]}… (every piece checked): not the signed release"
            )

    def _finish(self) -> None:
        os.replace(self.part, self.tar)
        dfd = os.open(self.tar.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def remove(self) -> None:
        """Delete the partial and the finished download."""
        remove_release_files(self.part.parent, self.release.sha256)
        self._have = None
        self._count = 0


def remove_release_files(directory: Path, sha: str) -> None:
    for path in (directory / f"{sha}.part", directory / f"{sha}.tar"):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(_HASH_READ)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()
