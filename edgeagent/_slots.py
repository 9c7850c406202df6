"""Release slots on a board: each agent version in its own venv under the
releases root ``R``, the ``current``/``previous``/``launcher`` pointers, and the
launcher's state in ``DATA_DIR/launch.json`` (the pending trial, the last roll
back, the versions found broken here).

Layout::

    R/releases/<version>/     a venv with that version, complete once it holds
                              .edgeflock-installed (written after a sync, then
                              releases/<version>.tmp is renamed to this)
    R/current, R/previous     relative symbolic links into releases/, replaced
                              atomically (a link to a temporary name, renamed)
    R/launcher                the release first boot installed: the launcher's
                              own code, never removed
    D/launch.json             {"format": 1, "trial": {...} | null,
                               "rollback": {...} | null, "broken": {version: {...}}}
    D/upgrade/meta-before-<version>.db   the agent's SQLite as it was at the switch

Standard library only, and light: ``edgeagent launch`` imports it (the install
step, ``edgeagent._install``, loads when called). The agent's Upgrader calls the
blocking methods in a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, NoReturn

from edgeio._files import fsync_dir, write_atomic  # os and contextlib only

__all__ = [
    "ENV_LAUNCHER",
    "ENV_RELEASES",
    "ENV_TRIAL",
    "RELAUNCH_EXIT",
    "STATE_FILE",
    "RollbackRecord",
    "SlotError",
    "Slots",
    "Trial",
    "relaunch",
]

ENV_RELEASES = "EDGEFLOCK_RELEASES"  # the releases root, set by edgeagent launch
ENV_LAUNCHER = "EDGEFLOCK_LAUNCHER"  # JSON argv that runs the launcher again
ENV_TRIAL = "EDGEFLOCK_TRIAL"  # the version on trial, in the agent the supervisor starts
RELAUNCH_EXIT = 75  # an agent on trial exits with this to have the launcher run again
STATE_FILE = "launch.json"
MARKER = ".edgeflock-installed"
_FORMAT = 1
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")
_MAX_REASON = 1000


class SlotError(Exception):
    """A slot operation that cannot be done; ``str(exc)`` is the reason
    reported to the gateway."""


@dataclass(frozen=True, slots=True)
class Trial:
    """A switch to ``version`` not yet confirmed healthy. ``deadline`` is wall
    time (switch + ``health_timeout``), for show: the launcher gives each of its
    runs ``health_timeout`` seconds of its own monotonic clock, since a board's
    clock jumps at boot. ``rolling_back`` is the reason while a roll back is
    under way (a power cut then resumes it)."""

    version: str
    previous: str | None
    job: str
    uid: str
    deadline: float
    starts: int = 0
    healthy: bool = False
    health_timeout: int = 300
    rolling_back: str | None = None


@dataclass(frozen=True, slots=True)
class RollbackRecord:
    job: str
    uid: str
    version: str
    reason: str
    time: str  # RFC 3339


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise SlotError(f"bad version {version!r}")
    if version.endswith(".tmp"):
        raise SlotError(f"bad version {version!r}: .tmp names an install under way")
    return version


def _from_dict(cls: Any, raw: Any) -> Any:
    if not isinstance(raw, dict):
        return None
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in raw.items() if k in names})
    except TypeError:
        return None


class Slots:
    def __init__(self, releases: Path, data_dir: Path) -> None:
        self.root = Path(os.path.abspath(releases))
        self.releases = self.root / "releases"
        self.data_dir = Path(os.path.abspath(data_dir))

    @classmethod
    def from_env(cls, data_dir: Path) -> Slots | None:
        """The slots of an agent that ``edgeagent launch`` started, else None."""
        releases = os.environ.get(ENV_RELEASES)
        if not releases or not os.environ.get(ENV_LAUNCHER):
            return None
        return cls(Path(releases), data_dir)

    # -- pointers ----------------------------------------------------------------

    def link(self, name: str) -> str | None:
        """The version ``R/<name>`` points at (current, previous, launcher)."""
        try:
            target = os.readlink(self.root / name)
        except OSError:
            return None
        head, _, version = target.rstrip("/").rpartition("/")
        if head not in ("releases", str(self.releases)) or not _VERSION.fullmatch(version):
            return None
        return version

    def set_link(self, name: str, version: str | None) -> None:
        """Point ``R/<name>`` at ``releases/<version>`` (relative), or remove it:
        a link under a temporary name renamed over it, then R fsynced."""
        path = self.root / name
        if version is None:
            path.unlink(missing_ok=True)
        else:
            tmp = self.root / f".{name}.new"
            tmp.unlink(missing_ok=True)
            os.symlink(f"releases/{version}", tmp)
            os.replace(tmp, path)
        fsync_dir(self.root)

    def current_version(self) -> str | None:
        return self.link("current")

    def installed(self, version: str) -> bool:
        return (self.releases / version / MARKER).is_file()

    def installed_versions(self) -> list[str]:
        try:
            return sorted(p.name for p in self.releases.iterdir() if (p / MARKER).is_file())
        except OSError:
            return []

    def agent(self, version: str | None = None) -> Path:
        """The agent command of ``version``'s slot (of ``current`` by default)."""
        base = self.root / "current" if version is None else self.releases / version
        return base / "bin" / "edgeagent"

    def free_bytes(self) -> int:
        path = self.root
        while not path.exists() and path != path.parent:
            path = path.parent
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    # -- launch.json ---------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Between the launcher and the agent, read-modify-write of launch.json
        one at a time."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / ".launch.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read_state(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.state_path.read_bytes())
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as exc:
            # written atomically, so only a damaged card gets here: run current
            print(f"edgeagent launch: ignoring {self.state_path}: {exc}", file=sys.stderr)
            raw = {}
        if not isinstance(raw, dict):
            raw = {}
        broken = raw.get("broken")
        return {
            "format": _FORMAT,
            "trial": raw.get("trial"),
            "rollback": raw.get("rollback"),
            "broken": broken if isinstance(broken, dict) else {},
        }

    def _write_state(self, state: dict[str, Any]) -> None:
        data = json.dumps(state, indent=1, sort_keys=True).encode() + b"\n"
        write_atomic(self.state_path, data)

    @contextlib.contextmanager
    def update(self) -> Iterator[dict[str, Any]]:
        """launch.json locked, read, changed by the caller, written back;
        SlotError if it cannot be (a full or read-only card)."""
        try:
            with self._locked():
                state = self.read_state()
                before = json.dumps(state, sort_keys=True)
                yield state
                if json.dumps(state, sort_keys=True) != before:
                    self._write_state(state)
        except OSError as exc:
            raise SlotError(f"cannot write {self.state_path}: {exc.strerror or exc}") from None

    def trial(self) -> Trial | None:
        trial: Trial | None = _from_dict(Trial, self.read_state()["trial"])
        return trial

    def set_trial(self, trial: Trial | None) -> None:
        with self.update() as state:
            state["trial"] = None if trial is None else asdict(trial)

    def mark_healthy(self) -> None:
        """The agent on trial is healthy: the launcher restarts it in direct mode
        and the trial ends. Nothing to do without a trial."""
        with self.update() as state:
            trial = _from_dict(Trial, state["trial"])
            if trial is not None and trial.rolling_back is None:
                state["trial"] = asdict(replace(trial, healthy=True))

    def rollback_record(self) -> RollbackRecord | None:
        record: RollbackRecord | None = _from_dict(RollbackRecord, self.read_state()["rollback"])
        return record

    def clear_rollback_record(self) -> None:
        with self.update() as state:
            state["rollback"] = None

    def broken(self, version: str) -> str | None:
        entry = self.read_state()["broken"].get(version)
        if isinstance(entry, dict) and isinstance(entry.get("reason"), str):
            return str(entry["reason"])
        return None

    def backup_path(self, version: str) -> Path:
        return self.data_dir / "upgrade" / f"meta-before-{version}.db"

    # -- install -------------------------------------------------------------------

    def referenced(self) -> set[str]:
        """Versions that must stay: the pointers' and a pending trial's."""
        keep = {v for n in ("current", "previous", "launcher") if (v := self.link(n))}
        trial = self.trial()
        if trial is not None:
            keep.add(trial.version)
            if trial.previous:
                keep.add(trial.previous)
        return keep

    def install(self, version: str, archive: Path) -> None:
        """Install the release ``archive`` (a tar made of an ``edgeflash bundle``
        directory, or such a directory itself) as ``releases/<version>``.
        Blocking; idempotent (an installed version is left as it is). Leftovers
        of an interrupted install, and releases nothing points at, are removed
        first. SlotError says why it failed (a full disk says so); the partial
        directory is then removed and nothing else is touched."""
        from . import _install as inst

        check_version(version)
        if self.installed(version):
            return
        self.releases.mkdir(parents=True, exist_ok=True)
        with self._install_lock():
            if self.installed(version):
                return
            self._collect(keep=self.referenced())
            tmp = self.releases / f"{version}.tmp"
            final = self.releases / version
            staging = tmp / ".release"
            try:
                tmp.mkdir()
                if Path(archive).is_dir():
                    release = inst.read_bundle_dir(Path(archive), version)
                else:
                    release = inst.read_archive(Path(archive), version, staging)
                current = self.releases / cur if (cur := self.current_version()) else None
                inst.build_venv(release, tmp, final, current)
                inst.write_release_info(tmp, release)
                inst.remove_tree(staging)
                os.sync()  # everything pip wrote is on the card before the marker
                write_atomic(tmp / MARKER, f"{version}\n".encode(), 0o644)
                os.replace(tmp, final)
                fsync_dir(self.releases)
            except BaseException as exc:
                inst.remove_tree(tmp)
                if inst.disk_full(exc):
                    free = self.free_bytes() >> 20
                    raise SlotError(
                        f"disk full while installing {version} in {self.releases} "
                        f"({free} MiB free after cleaning up)"
                    ) from None
                if isinstance(exc, inst.InstallError):
                    raise SlotError(f"cannot install {version}: {exc}") from None
                if isinstance(exc, OSError):
                    raise SlotError(f"cannot install {version}: {exc}") from None
                raise

    @contextlib.contextmanager
    def _install_lock(self) -> Iterator[None]:
        fd = os.open(self.root / ".install.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SlotError("another install is under way") from None
            yield
        finally:
            os.close(fd)

    def _collect(self, *, keep: set[str]) -> None:
        """Remove from releases/ what is not kept: an interrupted install's
        ``<version>.tmp``, and releases nothing points at any more."""
        from ._install import remove_tree

        for entry in self.releases.iterdir():
            if entry.name not in keep:
                remove_tree(entry)

    def first_install(self, version: str, source: Path) -> None:
        """First boot: install ``source`` and make it ``launcher`` and ``current``
        (each only if not set yet)."""
        self.install(version, source)
        if self.link("launcher") is None:
            self.set_link("launcher", version)
        if self.link("current") is None:
            self.set_link("current", version)

    # -- switch ----------------------------------------------------------------------

    def switch(
        self, version: str, *, job: str, uid: str, health_timeout: int, meta_db: Path
    ) -> None:
        """Make ``version`` current, on trial: ``meta_db`` backed up (a consistent
        copy, even while the agent has it open), the trial written (fsynced),
        then ``previous`` := current and ``current`` := version, each replaced
        atomically. The caller then stops the agent and ``relaunch()``es."""
        check_version(version)
        if not self.installed(version):
            raise SlotError(f"{version} is not installed")
        current = self.current_version()
        if current == version:
            raise SlotError(f"{version} is already the current version")
        pending = self.trial()
        if pending is not None and pending.version == current and not pending.healthy:
            raise SlotError(f"{current} is still on trial")
        backup = self.backup_path(version)
        if Path(meta_db).exists():
            backup_db(Path(meta_db), backup)
        trial = Trial(
            version=version,
            previous=current,
            job=job,
            uid=uid,
            deadline=time.time() + health_timeout,
            health_timeout=int(health_timeout),
        )
        self.set_trial(trial)
        try:
            if current is not None:
                self.set_link("previous", current)
            self.set_link("current", version)
        except OSError as exc:
            # current did not move: the launcher discards this trial at its next start
            raise SlotError(f"cannot switch to {version}: {exc.strerror or exc}") from None

    # -- roll back (the launcher's) ----------------------------------------------------

    def begin_rollback(self, trial: Trial, reason: str) -> Trial:
        """Record the roll back before doing it: the version marked broken, the
        record for the agent to report, the trial marked rolling back (so a power
        cut resumes it)."""
        reason = reason[:_MAX_REASON]
        with self.update() as state:
            when = now_rfc3339()
            state["broken"][trial.version] = {"reason": reason, "time": when}
            state["rollback"] = asdict(
                RollbackRecord(trial.job, trial.uid, trial.version, reason, when)
            )
            trial = replace(trial, rolling_back=reason)
            state["trial"] = asdict(trial)
        return trial

    def finish_rollback(self, trial: Trial) -> str | None:
        """``current`` := the version before the trial (else the launcher's), the
        SQLite backup restored if the live store's schema version differs, the
        trial cleared. The version now current (None: nothing to go back to)."""
        target = None
        for candidate in (trial.previous, self.link("launcher")):
            if candidate and candidate != trial.version and self.installed(candidate):
                target = candidate
                break
        backup = self.backup_path(trial.version)
        if target is not None:
            try:
                restore_db(self.data_dir / "meta.db", backup)
            except (OSError, ImportError) as exc:  # the old agent may still read it
                print(f"edgeagent launch: cannot restore {backup}: {exc}", file=sys.stderr)
            self.set_link("current", target)
            if self.link("previous") in (target, trial.version):
                self.set_link("previous", None)
        self.set_trial(None)
        backup.unlink(missing_ok=True)
        return target

    def end_trial(self) -> None:
        """The trial is over (healthy, or discarded): cleared, its backup removed."""
        trial = self.trial()
        self.set_trial(None)
        if trial is not None:
            self.backup_path(trial.version).unlink(missing_ok=True)

    def describe(self) -> dict[str, Any]:
        """What ``edgeagent launch --status`` shows."""
        state = self.read_state()
        return {
            "releases": str(self.root),
            "installed": self.installed_versions(),
            "current": self.current_version(),
            "previous": self.link("previous"),
            "launcher": self.link("launcher"),
            "trial": state["trial"],
            "rollback": state["rollback"],
            "broken": state["broken"],
        }


# -- the agent's SQLite ------------------------------------------------------------


def backup_db(live: Path, backup: Path) -> None:
    """A consistent copy of the agent's SQLite (WAL; the agent may have it open:
    the backup reads one snapshot), written beside ``backup`` and renamed."""
    import sqlite3

    backup.parent.mkdir(parents=True, exist_ok=True)
    tmp = backup.with_name(backup.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(f"file:{live}?mode=ro", uri=True, timeout=30)
        try:
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)
                # one self-contained file (the copy came in WAL mode, as the source)
                dst.execute("PRAGMA journal_mode=DELETE")
            finally:
                dst.close()
        finally:
            src.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, backup)
        fsync_dir(backup.parent)
    except sqlite3.Error as exc:
        tmp.unlink(missing_ok=True)
        raise SlotError(f"cannot back up {live}: {exc}") from None
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SlotError(f"cannot back up {live}: {exc}") from None


def user_version(path: Path) -> int | None:
    """``PRAGMA user_version`` of a SQLite file (None: unreadable)."""
    import sqlite3

    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            row = conn.execute("PRAGMA user_version").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return int(row[0]) if row else None


def restore_db(live: Path, backup: Path) -> bool:
    """Put ``backup`` back as the agent's store if the live store's schema
    version differs from it (one the older agent may not read); True if it did.
    Through SQLite's backup API (a transaction on the live store, WAL and all),
    or, if the live file is not a database SQLite can write, by replacing it."""
    import sqlite3

    if not backup.exists():
        return False
    wanted = user_version(backup)
    if wanted is None or user_version(live) == wanted:
        return False
    try:
        src = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
        try:
            dst = sqlite3.connect(live, timeout=30)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
        return True
    except sqlite3.Error:
        pass
    # unreadable live store: the file replaced, its WAL and index removed first
    # (a stale WAL must never be replayed onto the restored file)
    tmp = live.with_name(live.name + ".restore")
    tmp.write_bytes(backup.read_bytes())
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        live.with_name(live.name + suffix).unlink(missing_ok=True)
    os.replace(tmp, live)
    fsync_dir(live.parent)
    return True


def relaunch() -> NoReturn:
    """Run the launcher again in this process (``os.execv`` of
    ``EDGEFLOCK_LAUNCHER``), after the agent has stopped cleanly. An agent on
    trial is a child of the launcher: it exits with RELAUNCH_EXIT instead, and
    the launcher runs again. SlotError if ``edgeagent launch`` did not start it."""
    raw = os.environ.get(ENV_LAUNCHER)
    try:
        argv = json.loads(raw) if raw else None
    except ValueError:
        argv = None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise SlotError("not started by edgeagent launch: cannot relaunch")
    sys.stdout.flush()
    sys.stderr.flush()
    if os.environ.get(ENV_TRIAL):
        os._exit(RELAUNCH_EXIT)
    env = {k: v for k, v in os.environ.items() if k != ENV_TRIAL}
    os.execve(argv[0], argv, env)


def main(argv: list[str] | None = None) -> int:
    """``python3 -m edgeagent._slots install --releases R --data-dir D [--first]
    SOURCE``: first boot installs the image's bundle with this (importing it
    from the bundle's own edgeflock wheel)."""
    import argparse

    p = argparse.ArgumentParser(prog="edgeagent-slots")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("install", help="install a release (tar or bundle directory)")
    i.add_argument("source", type=Path)
    i.add_argument("--releases", type=Path, required=True)
    i.add_argument("--data-dir", type=Path, required=True)
    i.add_argument("--version", help="default: what the release's manifest.json names")
    i.add_argument("--first", action="store_true", help="also set launcher and current")
    args = p.parse_args(argv)
    slots = Slots(args.releases, args.data_dir)
    try:
        version = args.version or release_version(args.source)
        if args.first:
            slots.first_install(version, args.source)
        else:
            slots.install(version, args.source)
    except SlotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(version)
    return 0


def release_version(source: Path) -> str:
    """The version a release's manifest.json names (bundle directory or tar)."""
    try:
        if source.is_dir():
            raw = json.loads((source / "manifest.json").read_bytes())
        else:
            import tarfile

            with tarfile.open(source, "r:") as tf:
                f = tf.extractfile("manifest.json")
                raw = json.loads(f.read()) if f is not None else None
        version = raw["project"]["version"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SlotError(f"{source}: cannot read the release's manifest.json ({exc})") from None
    return check_version(version)


if __name__ == "__main__":
    sys.exit(main())
