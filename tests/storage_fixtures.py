"""A directory that can be switched between writable and read-only for real:
a bind mount of a temporary directory, remounted ``ro`` and back (the tests run
as root)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class BindMount:
    path: Path

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(self.path)], check=True)

    def writable(self) -> None:
        subprocess.run(["mount", "-o", "remount,bind,rw", str(self.path)], check=True)


@pytest.fixture
def bind_mount(tmp_path: Path) -> Iterator[BindMount]:
    source, target = tmp_path / "card", tmp_path / "mnt"
    source.mkdir()
    target.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        yield BindMount(target)
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)
