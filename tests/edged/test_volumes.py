"""configMap/secret volumes swapped in whole, built on edgeio.write_atomic."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from edgeagent.edged._volumes import MountError, write_volume_files
from tests.conftest import fill_up


def _entries(vol: Path) -> list[str]:
    return sorted(os.listdir(vol))


def test_a_bad_path_changes_nothing(tmp_path: Path) -> None:
    vol = tmp_path / "v"
    assert write_volume_files(vol, {"a": b"1"}, 0o644)
    before = _entries(vol)
    for bad in ("../escape", "/abs", "x/../../y", ""):
        with pytest.raises(MountError, match="invalid volume path"):
            write_volume_files(vol, {"b": b"2", bad: b"3"}, 0o644)
    assert _entries(vol) == before  # no half-written ..<stamp> directory left
    assert (vol / "a").read_bytes() == b"1"


def test_a_full_disk_keeps_the_old_files(small_fs: Path) -> None:
    """A real full filesystem (tmpfs): the swap fails, the pod keeps seeing the
    old files, and the half-written new directory is removed."""
    vol = small_fs / "v"
    assert write_volume_files(vol, {"a": b"1", "dir/b": b"2"}, 0o644)
    before = _entries(vol)
    filler = fill_up(small_fs)
    with pytest.raises(OSError) as info:
        write_volume_files(vol, {"a": b"new", "dir/b": b"x" * 200_000}, 0o644)
    assert info.value.errno == errno.ENOSPC
    assert _entries(vol) == before
    assert (vol / "a").read_bytes() == b"1" and (vol / "dir" / "b").read_bytes() == b"2"
    filler.unlink()
    assert write_volume_files(vol, {"a": b"new"}, 0o600)
    assert (vol / "a").read_bytes() == b"new" and not (vol / "dir").exists()
    assert len([e for e in _entries(vol) if e.startswith("..")]) == 2  # ..data and its dir


def test_leftovers_of_a_crash_are_cleared_by_the_next_swap(tmp_path: Path) -> None:
    vol = tmp_path / "v"
    assert write_volume_files(vol, {"a": b"1"}, 0o644)
    # What a kill -9 between writing and swapping leaves behind.
    (vol / "..2026_01_01_00_00_00.1").mkdir()
    (vol / "..data_tmp...2026_01_01_00_00_00.1").symlink_to("..2026_01_01_00_00_00.1")
    assert write_volume_files(vol, {"a": b"2"}, 0o644)
    assert _entries(vol) == sorted(["..data", os.readlink(vol / "..data"), "a"])
