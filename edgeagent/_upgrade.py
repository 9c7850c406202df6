"""The agent's side of an upgrade over the air (``Upgrader``, an agent module
that runs when the agent was started by ``edgeagent launch``).

It follows its own Node's ``edgeflock.io/upgrade`` annotation (an
``Assignment``) as sync batches are applied. For an assignment it has not
finished (each job uid is acted on to its end once; the outcome is kept in the
store's state ``upgrade_done``):

- already at the version: report ``healthy``;
- the version was rolled back on this board before: report ``failed`` with the
  reason it was marked broken, without trying it again;
- else: check the release key (``DATA_DIR/release.pub``) and the free space
  (3 x the release's size + 64 MiB on the releases' filesystem), download and
  verify the release (``_download``; transient trouble — no session, the
  gateway busy — is retried with back-off, the download going on where it
  stopped), install it into its slot, switch to it and stop the agent so that
  the launcher starts the new version on trial.

Every step is reported through the persisted outbox under one coalescing key
(``nodes//<node>#upgrade``, op ``upgrade``: the latest wins). A permanent
failure is reported ``failed`` with its reason, remembered for the job's uid,
and its files removed. An assignment removed or changed before the switch
stops the work and deletes the partial download.

A new agent on trial (``EDGEFLOCK_TRIAL``) marks itself healthy after its
first stored resync and reports ``healthy``; an agent that finds a rollback
record (the launcher went back to the previous version) reports
``rolledBack`` with its reason, then clears it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import cbor2
import trio

import edgeproto
from edgeproto.upgrade import (
    ANNOTATION,
    REPORT_OP,
    Assignment,
    NodeState,
    UpgradeError,
    UpgradeReport,
    decode_assignment,
    report_body,
)

from ._config import AgentConfig
from ._download import (
    Download,
    Permanent,
    Release,
    Transient,
    fetch_release,
    remove_release_files,
)
from ._failover import full_jitter
from ._hub import HubClient
from ._meta import Meta
from ._version import VERSION

log = logging.getLogger(__name__)

__all__ = ["DONE_STATE", "MARGIN", "Upgrader", "free_space_needed"]

MARGIN = 64 * 1024 * 1024  # bytes kept free beyond what an upgrade needs
DONE_STATE = "upgrade_done"  # state: {job uid: terminal state reported}, the latest few
_DONE_KEPT = 32
REQUEST_TIMEOUT = 30.0  # seconds for the gateway to answer one piece or manifest request


class _TrialLike(Protocol):
    version: str
    job: str
    uid: str
    healthy: bool


class _RollbackLike(Protocol):
    job: str
    uid: str
    version: str
    reason: str
    time: str


class SlotsLike(Protocol):
    """What the Upgrader uses of ``edgeagent._slots.Slots``; the blocking
    ones are called in a worker thread."""

    def broken(self, version: str) -> str | None: ...
    def free_bytes(self) -> int: ...
    def install(self, version: str, archive: Path) -> None: ...
    def switch(
        self, version: str, *, job: str, uid: str, health_timeout: int, meta_db: Path
    ) -> None: ...
    def trial(self) -> Any: ...
    def mark_healthy(self) -> None: ...
    def rollback_record(self) -> Any: ...
    def clear_rollback_record(self) -> None: ...


def free_space_needed(size: int, allocated: int = 0) -> int:
    """Free bytes an upgrade to a release of ``size`` bytes needs on the
    releases' filesystem: the archive, the installed slot (about twice the
    archive: wheels unpacked), and a margin; less what the download holds
    already (``allocated``)."""
    return max(0, 3 * size + MARGIN - allocated)


def _now() -> str:
    return edgeproto.rfc3339(time.time())


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text if text else type(exc).__name__


class Upgrader:
    """``on_switched`` is called once the new version is switched to: the
    app stops every module, closes the store and relaunches."""

    def __init__(
        self,
        config: AgentConfig,
        meta: Meta,
        hub: HubClient,
        slots: SlotsLike,
        *,
        on_switched: Callable[[], None],
        trial: str | None = None,
    ) -> None:
        self._cfg = config
        self._meta = meta
        self._hub = hub
        self._slots = slots
        self._on_switched = on_switched
        self._trial = trial
        self._node_key = edgeproto.make_key("nodes", "", config.node)
        self._report_key = self._node_key + "#upgrade"
        self.dir = config.data_dir / "upgrade"
        self.key_path = config.data_dir / "release.pub"
        self.state = "idle"  # what it is doing, for tests and status
        self.download: Download | None = None  # the one in progress (or last)
        self.reports: list[UpgradeReport] = []  # enqueued by this process, in order

    # ---- the module ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self._report_rollback()
        if self._trial:
            await self._confirm_trial()
        await self._follow()

    async def _report_rollback(self) -> None:
        rec: _RollbackLike | None = await trio.to_thread.run_sync(self._slots.rollback_record)
        if rec is None:
            return
        log.warning("version %s was rolled back: %s", rec.version, rec.reason)
        await self._report(
            UpgradeReport(
                rec.job, rec.uid, rec.version, NodeState.ROLLED_BACK, rec.reason, rec.time
            )
        )
        await trio.to_thread.run_sync(self._slots.clear_rollback_record)

    async def _confirm_trial(self) -> None:
        trial: _TrialLike | None = await trio.to_thread.run_sync(self._slots.trial)
        if trial is None or trial.version != VERSION:
            return  # the launcher discarded it (or it is not this version's)
        if not trial.healthy:
            self.state = "trial"
            log.info("on trial as %s: healthy after the first resync", VERSION)
            await self._hub.wait_resynced()
        # Marked healthy, the launcher stops this agent at once (to restart it
        # in direct mode): marking and reporting are done together, shielded.
        with trio.CancelScope(shield=True):
            if not trial.healthy:
                await trio.to_thread.run_sync(self._slots.mark_healthy)
            log.info("version %s healthy", VERSION)
            await self._report(
                UpgradeReport(trial.job, trial.uid, trial.version, NodeState.HEALTHY, "", _now())
            )

    async def _follow(self) -> None:
        """Act on the Node's assignment; re-read it after each applied batch.
        Not before this process's first resync: the Node in the store may be
        from long ago (an assignment withdrawn since)."""
        self.state = "idle"
        await self._hub.wait_resynced()
        async with trio.open_nursery() as nursery:
            job: tuple[Assignment, trio.CancelScope] | None = None
            done = trio.Event()
            seen: Assignment | bool | None = False  # the assignment last acted on
            while True:
                gen = self._meta.generation
                a = await self._assignment()
                if job is not None and (a != job[0] or done.is_set()):
                    if not done.is_set():
                        log.info(
                            "upgrade to %s: assignment changed or removed; stopping", job[0].version
                        )
                        job[1].cancel()
                        await done.wait()
                    job = None
                if job is None and a != seen:
                    seen = a
                    await self._clean(a)
                    finished = (await self._done()).get(a.uid) if a is not None else None
                    if a is not None and finished is not None:
                        log.info("upgrade job %s (uid %s): %s here already", a.job, a.uid, finished)
                    elif a is not None:
                        scope = trio.CancelScope()
                        done = trio.Event()
                        job = (a, scope)
                        nursery.start_soon(self._job, a, scope, done)
                await self._meta.wait_changed(gen)

    async def _assignment(self) -> Assignment | None:
        node = await self._meta.get(self._node_key)
        value = ((node or {}).get("metadata") or {}).get("annotations", {}).get(ANNOTATION)
        if value is None:
            return None
        try:
            return decode_assignment(value)
        except UpgradeError as exc:
            log.warning("ignoring the Node's upgrade assignment: %s", exc)
            return None

    async def _done(self) -> dict[str, str]:
        done = await self._meta.get_state(DONE_STATE, {})
        return done if isinstance(done, dict) else {}

    async def _clean(self, keep: Assignment | None) -> None:
        """Delete downloads that are not the current assignment's."""

        def clean() -> None:
            try:
                names = os.listdir(self.dir)
            except FileNotFoundError:
                return
            for name in names:
                sha, _, ext = name.partition(".")
                if ext in ("part", "tar") and (keep is None or sha != keep.release):
                    log.info("removing %s: not the release assigned", name)
                    with contextlib.suppress(FileNotFoundError):
                        (self.dir / name).unlink()

        await trio.to_thread.run_sync(clean)

    # ---- one assignment ---------------------------------------------------------------

    async def _job(self, a: Assignment, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            with scope:
                try:
                    await self._upgrade(a)
                except Permanent as exc:
                    await self._fail(a, _reason(exc))
        except Exception:
            log.exception("upgrade to %s failed unexpectedly", a.version)
            with trio.CancelScope(shield=True):
                await self._fail(a, "the agent's upgrader failed unexpectedly (see its log)")
        finally:
            self.state = "idle"
            done.set()

    async def _upgrade(self, a: Assignment) -> None:
        if a.version == VERSION:
            log.info("upgrade job %s: already at %s", a.job, VERSION)
            await self._finish(a, NodeState.HEALTHY, f"already at version {VERSION}")
            return
        broken = await trio.to_thread.run_sync(self._slots.broken, a.version)
        if broken is not None:
            raise Permanent(f"version {a.version} was rolled back on this board before: {broken}")
        try:
            key = await trio.to_thread.run_sync(self.key_path.read_bytes)
        except FileNotFoundError:
            raise Permanent(
                f"this board has no release key ({self.key_path}): it refuses upgrades; "
                "join it with a release key (edgeagent join --release-key FILE)"
            ) from None
        await self._check_space(a)
        log.info("upgrade job %s: to %s (release %s)", a.job, a.version, a.release[:12])
        self.state = "downloading"
        await self._report_state(a, NodeState.DOWNLOADING, "")
        tar = await self._download(a, key)
        self.state = "installing"
        await self._report_state(a, NodeState.INSTALLING, "")
        try:
            await trio.to_thread.run_sync(self._slots.install, a.version, tar)
        except Exception as exc:  # SlotError: the reason the board gives
            raise Permanent(f"install of {a.version} failed: {_reason(exc)}") from None
        with trio.CancelScope(shield=True):
            # Past this point the new version is current: the agent must go.
            if await self._assignment() != a:
                log.info("upgrade to %s: assignment changed before the switch", a.version)
                await self._remove(a)
                return
            try:
                await trio.to_thread.run_sync(
                    lambda: self._slots.switch(
                        a.version,
                        job=a.job,
                        uid=a.uid,
                        health_timeout=a.health_timeout,
                        meta_db=self._cfg.meta_path,
                    )
                )
            except Exception as exc:
                raise Permanent(f"switch to {a.version} failed: {_reason(exc)}") from None
            self.state = "switched"
            await self._report_state(a, NodeState.SWITCHED, "")
            await self._remove(a)
            log.warning("switched to %s: stopping to start it on trial", a.version)
            self._on_switched()

    async def _check_space(self, a: Assignment) -> None:
        allocated = await trio.to_thread.run_sync(self._allocated, a.release)
        free = await trio.to_thread.run_sync(self._slots.free_bytes)
        need = free_space_needed(a.size, allocated)
        if free < need:
            raise Permanent(
                f"not enough disk space for {a.version}: {free // 2**20} MiB free on the "
                f"releases' filesystem, {need // 2**20} MiB needed (3 x the release's "
                f"{a.size // 2**20} MiB + {MARGIN // 2**20} MiB)"
            )
        st = await trio.to_thread.run_sync(os.statvfs, self._cfg.data_dir)
        data_free = st.f_bavail * st.f_frsize
        data_need = max(0, a.size + MARGIN // 4 - allocated)
        if data_free < data_need:
            raise Permanent(
                f"not enough disk space for {a.version}'s download: {data_free // 2**20} MiB "
                f"free in {self._cfg.data_dir}, {data_need // 2**20} MiB needed"
            )

    def _allocated(self, sha: str) -> int:
        total = 0
        for ext in ("part", "tar"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(self.dir / f"{sha}.{ext}").st_blocks * 512
        return total

    async def _download(self, a: Assignment, key: bytes) -> Path:
        """The verified archive; transient trouble is waited out."""
        cfg = self._cfg
        release: Release | None = None
        attempt = 0
        while True:
            await self._hub.wait_connected()
            before = self.download.have if self.download is not None else 0
            try:
                if release is None:
                    release = await fetch_release(self._hub.request, a, key, wait=REQUEST_TIMEOUT)
                if self.download is None or self.download.release != release:
                    self.download = Download(
                        release, self.dir, self._hub.request, timeout=REQUEST_TIMEOUT
                    )
                return await self.download.run(self._progress(a))
            except Transient as exc:
                if self.download is not None and self.download.have > before:
                    attempt = 0  # it moved: back-off starts over
                delay = max(
                    cfg.backoff_base, full_jitter(attempt, cfg.backoff_base, cfg.backoff_cap)
                )
                attempt += 1
                log.info("release %s: %s; again in %.1f s", a.release[:12], exc, delay)
                await trio.sleep(delay)

    def _progress(self, a: Assignment) -> Callable[[int, int], Any]:
        async def progress(have: int, total: int) -> None:
            if have < total:
                text = f"{have * 100 // total}% ({have} of {total} pieces)"
                await self._report_state(a, NodeState.DOWNLOADING, text)

        return progress

    # ---- outcomes and reports ---------------------------------------------------------

    async def _fail(self, a: Assignment, reason: str) -> None:
        log.warning("upgrade job %s to %s failed: %s", a.job, a.version, reason)
        await self._remove(a)
        await self._finish(a, NodeState.FAILED, reason)

    async def _remove(self, a: Assignment) -> None:
        self.download = None
        await trio.to_thread.run_sync(remove_release_files, self.dir, a.release)

    async def _finish(self, a: Assignment, state: NodeState, reason: str) -> None:
        """Report a final state: this board does nothing more for that job."""
        await self._report(UpgradeReport(a.job, a.uid, a.version, state, reason, _now()))

    async def _report_state(self, a: Assignment, state: NodeState, reason: str) -> None:
        await self._report(UpgradeReport(a.job, a.uid, a.version, state, reason, _now()))

    async def _report(self, r: UpgradeReport) -> None:
        """Enqueue ``r`` (persisted; the latest replaces an unsent one). A
        final state is then remembered for the job's uid: a crash between the
        two makes the board go through the job again, and report again."""
        body = cbor2.dumps(report_body(r))
        await self._meta.enqueue([(self._report_key, REPORT_OP, body, True)])
        if r.state.terminal:
            done = await self._done()
            done.pop(r.uid, None)
            done[r.uid] = r.state.value
            await self._meta.set_state(**{DONE_STATE: dict(list(done.items())[-_DONE_KEPT:])})
        self.reports.append(r)
        log.info("upgrade report: %s %s %s", r.state.value, r.version, r.reason)
