"""Release slots: real installs of real release archives (``edgeflash bundle`` of
this tree, packed as the release tar), real pip, a real full filesystem (tmpfs)
and a real kill -9 of an install under way. Costs ~25 s besides the session's
release builds (one full install on a tmpfs, the rest fail early)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgeagent._slots import RELAUNCH_EXIT, SlotError, Slots
from edgeagent._version import VERSION
from tests.conftest import tmpfs, wait_for_sync

from .conftest import CRASH, GOOD, Installed, Releases


def _run(venv: Path, *code: str) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "\n".join(code)],
        capture_output=True, text=True, check=True, cwd="/",
    )  # fmt: skip
    return out.stdout.strip()


def test_install_makes_a_working_venv_reusing_unchanged_packages(installed: Installed) -> None:
    slots = installed.slots
    base, good = slots.releases / VERSION, slots.releases / GOOD
    assert slots.installed(VERSION) and slots.installed(GOOD)
    assert not any(p.name.endswith(".tmp") for p in slots.releases.iterdir())
    assert slots.link("launcher") == VERSION and os.readlink(slots.root / "launcher") == (
        f"releases/{VERSION}"
    )
    # The new venv imports its own edgeflock and every dependency, from itself.
    out = _run(good, "import edgeagent._version as v, trio, apsw, cbor2, cryptography, grpc",
               "print(v.VERSION, apsw.__file__)")  # fmt: skip
    version, apsw_file = out.split()
    assert version == GOOD and apsw_file.startswith(str(good) + "/")
    # Scripts name the venv where it is now, not where it was built (GOOD.tmp).
    assert (good / "bin" / "edgeagent").read_text().splitlines()[0] == f"#!{good}/bin/python"
    assert ".tmp/" not in (good / "bin" / "pip").read_text()
    # Unchanged wheels were not installed again: their files are the base's inodes...
    site = (
        Path("lib") / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    )
    for rel in ("trio/__init__.py", "apsw/__init__.pyi", "pip/__init__.py"):
        a, b = (base / site / rel).stat(), (good / site / rel).stat()
        assert (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev), rel
    # ...while edgeflock's own files are the new release's.
    a, b = (base / site / "edgeagent/_version.py"), (good / site / "edgeagent/_version.py")
    assert a.stat().st_ino != b.stat().st_ino and GOOD in b.read_text()
    check = subprocess.run([str(good / "bin/python"), "-m", "pip", "check"], capture_output=True)
    assert check.returncode == 0, check.stdout
    # Installing an installed version again does nothing.
    before = (good / ".edgeflock-installed").stat().st_mtime_ns
    slots.install(GOOD, Path("/nonexistent"))
    assert (good / ".edgeflock-installed").stat().st_mtime_ns == before
    print(f"install seconds: {installed.seconds}")


def _rewrite(src: Path, dest: Path, change: Callable[[tarfile.TarFile, list[tarfile.TarInfo]], None],
             edit: Callable[[tarfile.TarInfo, bytes], bytes] | None = None) -> Path:  # fmt: skip
    """A copy of release ``src`` with its members changed: ``edit`` maps each
    file's data, ``change`` adds members at the end."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tout:
        members = tin.getmembers()
        for m in members:
            f = tin.extractfile(m)
            data = f.read() if f is not None else b""
            if edit is not None:
                data = edit(m, data)
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
        change(tout, members)
    return dest


def _add(tf: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    data = b"x" if kind == tarfile.REGTYPE else b""
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data) if data else None)


def _nothing(tf: tarfile.TarFile, members: list[tarfile.TarInfo]) -> None:
    pass


def _flip_wheel(m: tarfile.TarInfo, data: bytes) -> bytes:
    if m.name.startswith("wheels/h11-"):
        return data[:100] + bytes([data[100] ^ 1]) + data[101:]
    return data


BAD = {
    "a wheel that does not match SHA256SUMS": (
        _nothing,
        _flip_wheel,
        "wheels/h11-0.16.0-py3-none-any.whl does not match its SHA256SUMS",
    ),
    "a member climbing out": (
        lambda tf, _: _add(tf, "wheels/../../../escaped"),
        None,
        "not a plain relative path",
    ),
    "an absolute member": (lambda tf, _: _add(tf, "/tmp/escaped-abs"), None, "not a relative path"),
    "a symbolic link": (
        lambda tf, _: _add(tf, "wheels/link.whl", tarfile.SYMTYPE, "/etc/passwd"),
        None,
        "is a symbolic link to '/etc/passwd': refused",
    ),
    "a hard link": (
        lambda tf, _: _add(tf, "wheels/hard.whl", tarfile.LNKTYPE, "/etc/shadow"),
        None,
        "is a hard link",
    ),
    "a device": (lambda tf, _: _add(tf, "dev", tarfile.CHRTYPE), None, "is a device"),
    "a file SHA256SUMS does not list": (
        lambda tf, _: _add(tf, "wheels/extra-1.0-py3-none-any.whl"),
        None,
        "wheels/extra-1.0-py3-none-any.whl is in the release but not in its SHA256SUMS",
    ),
    "an empty SHA256SUMS": (
        _nothing,
        lambda m, d: b"" if m.name == "SHA256SUMS" else d,
        "SHA256SUMS is empty",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_install_refuses_a_bad_release_and_leaves_nothing(
    case: str, releases: Releases, tmp_path: Path
) -> None:
    change, edit, message = BAD[case]
    archive = _rewrite(releases.base, tmp_path / "bad.tar", change, edit)
    slots = Slots(tmp_path / "R", tmp_path / "D")
    with pytest.raises(SlotError) as err:
        slots.install(VERSION, archive)
    assert message in str(err.value)
    assert str(err.value).startswith(f"cannot install {VERSION}: ")
    assert os.listdir(slots.releases) == []  # the partial slot is gone
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped-abs").exists()
    assert not (slots.data_dir).exists()


def test_install_refuses_a_release_of_another_version(releases: Releases, tmp_path: Path) -> None:
    slots = Slots(tmp_path / "R", tmp_path / "D")
    with pytest.raises(SlotError, match=f"the release is edgeflock {GOOD}, not 7.7.7"):
        slots.install("7.7.7", releases.good)
    with pytest.raises(SlotError, match="no such release archive"):
        slots.install(GOOD, releases.good.with_name("SHA256SUMS.not-there"))
    with pytest.raises(SlotError, match="bad version"):
        slots.install("../x", releases.good)
    assert os.listdir(slots.releases) == []


@pytest.fixture
def small_root(tmp_path: Path) -> Iterator[Path]:
    """A real 160 MiB tmpfs: room for one release's venv and a bit."""
    with tmpfs(tmp_path / "fs", "160m") as mnt:
        yield mnt


def _leave_free(directory: Path, free: int) -> Path:
    """Fill the filesystem of ``directory`` until ``free`` bytes are left."""
    filler = directory / "filler"
    st = os.statvfs(directory)
    with open(filler, "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - free))
    return filler


def test_disk_full_and_a_killed_install_leave_the_current_release_alone(
    releases: Releases, small_root: Path, tmp_path: Path
) -> None:
    slots = Slots(small_root / "R", tmp_path / "D")
    slots.first_install(VERSION, releases.base)
    base = slots.releases / VERSION
    listing = sorted(os.listdir(slots.root))
    with tarfile.open(releases.good) as tf:
        wheels = sum(m.size for m in tf.getmembers() if m.name.startswith("wheels/"))
    # Full while the release unpacks, then full while pip installs it.
    for free in (2 << 20, wheels + (1 << 20)):
        filler = _leave_free(small_root, free)
        with pytest.raises(SlotError) as err:
            slots.install(GOOD, releases.good)
        assert str(err.value).startswith(f"disk full while installing {GOOD} in {slots.releases}")
        assert sorted(os.listdir(slots.releases)) == [VERSION]  # the partial slot removed
        assert sorted(os.listdir(slots.root)) == listing
        assert slots.current_version() == VERSION
        assert abs(slots.free_bytes() - free) < (1 << 20)  # everything it wrote is gone
        filler.unlink()
    assert _run(base, "import edgeagent._version as v, trio; print(v.VERSION)") == VERSION

    # kill -9 of an install (and its pip) under way: the next install starts over.
    env = dict(os.environ)
    proc = subprocess.Popen(
        [str(base / "bin/python"), "-m", "edgeagent._slots", "install",
         "--releases", str(slots.root), "--data-dir", str(slots.data_dir), str(releases.good)],
        env=env, cwd="/", start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    tmp = slots.releases / f"{GOOD}.tmp"
    try:
        wait_for_sync(lambda: (tmp / "bin" / "python").exists(), timeout=60, interval=0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert tmp.is_dir() and not slots.installed(GOOD)
    slots.install(GOOD, releases.good)
    assert slots.installed(GOOD) and not tmp.exists()
    assert _run(slots.releases / GOOD, "import edgeagent._version as v; print(v.VERSION)") == GOOD


def test_relaunch_execs_the_launcher_or_asks_the_supervisor(tmp_path: Path) -> None:
    """relaunch() in an agent started by the launcher: exec of EDGEFLOCK_LAUNCHER
    in direct mode (same process, trial variable dropped); on trial, exit with
    RELAUNCH_EXIT for the supervisor; without a launcher, a SlotError."""
    code = "from edgeagent._slots import relaunch; relaunch()"
    show = "import os; print(os.getpid(), os.environ.get('EDGEFLOCK_TRIAL'))"
    probe = [sys.executable, "-c", f"import os; print(os.getpid(), flush=True); {code}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLOCK_")}
    launcher = json.dumps([sys.executable, "-c", show])
    run = subprocess.run(
        probe, env=dict(env, EDGEFLOCK_LAUNCHER=launcher, EDGEFLOCK_RELEASES=str(tmp_path)),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    before, after = run.stdout.splitlines()
    assert after == f"{before} None"  # the same process, now the launcher
    run = subprocess.run(
        probe, env=dict(env, EDGEFLOCK_LAUNCHER=launcher, EDGEFLOCK_TRIAL="9.9"),
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == RELAUNCH_EXIT and len(run.stdout.splitlines()) == 1
    run = subprocess.run(probe, env=env, capture_output=True, text=True)
    assert run.returncode == 1 and "SlotError: not started by edgeagent launch" in run.stderr


def test_switch_and_roll_back_bookkeeping(installed: Installed, tmp_path: Path) -> None:
    """What the launcher leaves for the agent after a roll back (the record it
    reports, then clears; the broken mark that stays), and the switches refused."""
    slots = Slots(installed.slots.root, tmp_path / "D")
    slots.set_link("current", VERSION)
    slots.set_link("previous", None)
    no_db = tmp_path / "no-meta.db"
    with pytest.raises(SlotError, match=f"{VERSION} is already the current version"):
        slots.switch(VERSION, job="j", uid="u", health_timeout=30, meta_db=no_db)
    with pytest.raises(SlotError, match=r"9\.9\.9 is not installed"):
        slots.switch("9.9.9", job="j", uid="u", health_timeout=30, meta_db=no_db)
    slots.switch(GOOD, job="j", uid="u", health_timeout=30, meta_db=no_db)
    with pytest.raises(SlotError, match=f"{GOOD} is still on trial"):
        slots.switch(CRASH, job="j2", uid="u2", health_timeout=30, meta_db=no_db)
    trial = slots.trial()
    assert trial is not None and (trial.job, trial.uid, trial.previous) == ("j", "u", VERSION)
    trial = slots.begin_rollback(trial, "why")
    assert trial.rolling_back == "why" and slots.trial() == trial
    slots.mark_healthy()  # too late: a trial being rolled back stays so
    assert slots.trial() == trial
    assert slots.finish_rollback(trial) == VERSION
    record = slots.rollback_record()
    assert record is not None and (record.job, record.uid, record.version) == ("j", "u", GOOD)
    assert record.reason == "why" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record.time)
    assert slots.broken(GOOD) == "why" and slots.broken(VERSION) is None
    assert (slots.current_version(), slots.link("previous"), slots.trial()) == (VERSION, None, None)
    slots.clear_rollback_record()
    assert slots.rollback_record() is None and slots.broken(GOOD) == "why"
    state = json.loads((slots.data_dir / "launch.json").read_text())
    assert state["format"] == 1 and set(state) == {"format", "trial", "rollback", "broken"}
    # A trial confirmed healthy no longer blocks the next switch.
    slots.switch(GOOD, job="j3", uid="u3", health_timeout=30, meta_db=no_db)
    slots.mark_healthy()
    slots.switch(CRASH, job="j4", uid="u4", health_timeout=30, meta_db=no_db)
    assert (slots.current_version(), slots.link("previous")) == (CRASH, GOOD)
    slots.set_link("current", VERSION)
    slots.set_link("previous", None)
