"""The FAT boot partition, edited in place with mtools (``IMG@@OFFSET``), never mounted."""

from __future__ import annotations

import os
import tempfile

from ._errors import FilesystemFull, ToolFailed
from ._tools import check_image_path, run_tool

__all__ = ["FatVolume"]


class FatVolume:
    def __init__(self, image: str, offset: int) -> None:
        self._spec = f"{image}@@{offset}"

    def _target(self, path: str) -> str:
        return "::" + check_image_path(path)

    def read(self, path: str) -> bytes:
        try:
            proc = run_tool(
                ["mcopy", "-n", "-i", self._spec, self._target(path), "-"], what=f"read {path}"
            )
        except ToolFailed as exc:
            raise ToolFailed(f"boot partition: cannot read {path}: {exc}") from None
        return proc.stdout

    def exists(self, path: str) -> bool:
        try:
            self.read(path)
        except ToolFailed:
            return False
        return True

    def listdir(self, path: str = "/") -> list[str]:
        target = "::/" if path == "/" else self._target(path)
        proc = run_tool(["mdir", "-b", "-i", self._spec, target], what=f"list {path}")
        names = []
        for line in proc.stdout.decode(errors="replace").splitlines():
            name = line.strip().removeprefix("::").rstrip("/")
            if name:
                names.append(name.rsplit("/", 1)[-1])
        return names

    def write(self, path: str, data: bytes) -> None:
        """Create or replace a file in the partition's root or an existing directory."""
        with tempfile.NamedTemporaryFile(prefix="edgeflash-", delete=False) as tmp:
            tmp.write(data)
        try:
            run_tool(
                ["mcopy", "-o", "-n", "-i", self._spec, tmp.name, self._target(path)],
                what=f"boot partition: write {path}",
            )
        except ToolFailed as exc:
            if "disk full" in str(exc).lower() or "no space" in str(exc).lower():
                raise FilesystemFull(f"boot partition is full writing {path}") from None
            raise
        finally:
            os.unlink(tmp.name)
