"""edgeio.write_atomic: the one durable file write (gateway PKI and tokens, the
agent's enrollment, edged's volumes)."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from edgeio import write_atomic
from tests.conftest import fill_up


def test_replaces_the_file_with_the_mode_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "ca.crt"
    old = os.umask(0o077)
    try:
        write_atomic(path, b"first", 0o644)
        write_atomic(path, b"second", 0o644)
    finally:
        os.umask(old)
    assert path.read_bytes() == b"second"
    assert path.stat().st_mode & 0o777 == 0o644  # not narrowed by the umask
    write_atomic(path, b"secret")
    assert path.stat().st_mode & 0o777 == 0o600  # the default: private
    assert os.listdir(tmp_path) == ["ca.crt"]


def test_a_full_disk_leaves_the_old_file_and_no_temporary(small_fs: Path) -> None:
    """A real full filesystem (tmpfs): the write fails with ENOSPC, the old
    content stays, and nothing is left behind (the copies this replaces left
    their fixed-name ``.tmp`` file)."""
    path = small_fs / "node.key"
    write_atomic(path, b"old key")
    fill_up(small_fs)
    with pytest.raises(OSError) as info:
        write_atomic(path, b"k" * 100_000)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old key"
    assert sorted(os.listdir(small_fs)) == ["filler", "node.key"]


def test_concurrent_writers_of_one_file_do_not_tear_it(tmp_path: Path) -> None:
    """Each writer has its own temporary file (a shared fixed name let two writers
    interleave their bytes or rename the other's half-written file)."""
    path = tmp_path / "state"
    payloads = [bytes([65 + i]) * 200_000 for i in range(4)]
    errors: list[BaseException] = []

    def writer(data: bytes) -> None:
        try:
            for _ in range(10):
                write_atomic(path, data)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert path.read_bytes() in payloads
    assert os.listdir(tmp_path) == ["state"]
