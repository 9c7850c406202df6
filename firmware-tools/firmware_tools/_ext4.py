"""The ext4 root partition, edited in place with debugfs (``IMG?offset=N``), never mounted."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass

from ._errors import FilesystemFull, ImageError, ToolFailed
from ._tools import check_image_path, run_tool

__all__ = ["Dir", "Entry", "Ext4Volume", "File", "Symlink"]


@dataclass(frozen=True, slots=True)
class Dir:
    path: str
    mode: int = 0o755


@dataclass(frozen=True, slots=True)
class File:
    path: str
    data: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True, slots=True)
class Symlink:
    path: str
    target: str


Op = Dir | File | Symlink


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    inode: int
    mode: int  # full st_mode, type bits included
    uid: int
    gid: int
    size: int


# Messages debugfs prints for steps that are expected to be no-ops here.
_BENIGN = (
    re.compile(r"^debugfs \d"),
    re.compile(r"^(ext2fs_)?mkdir: Ext2 directory already exists"),
    re.compile(r"^rm: File not found by ext2_lookup"),
)
_FULL = re.compile(r"allocate|no free space|no space left|could not allocate", re.IGNORECASE)
_LS_LINE = re.compile(r"^/(\d+)/(\d+)/(\d+)/(\d+)/(.*)/(\d*)/$")


def _errors(stderr: bytes) -> list[str]:
    out = []
    for line in stderr.decode(errors="replace").splitlines():
        line = line.strip()
        if line and not any(p.match(line) for p in _BENIGN):
            out.append(line)
    return out


class Ext4Volume:
    def __init__(self, image: str, offset: int) -> None:
        self._spec = f"{image}?offset={offset}"

    def _query(self, request: str, what: str) -> tuple[bytes, list[str]]:
        proc = run_tool(["debugfs", "-R", request, self._spec], what=what)
        return proc.stdout, _errors(proc.stderr)

    def read(self, path: str) -> bytes:
        out, errs = self._query(f"cat {check_image_path(path)}", f"read {path}")
        if errs:
            raise ToolFailed(f"root partition: cannot read {path}: {errs[0]}")
        return out

    def exists(self, path: str) -> bool:
        _out, errs = self._query(f"stat {check_image_path(path)}", f"stat {path}")
        return not errs

    def listdir(self, path: str) -> list[Entry]:
        out, errs = self._query(f"ls -p {check_image_path(path)}", f"list {path}")
        if errs:
            raise ToolFailed(f"root partition: cannot list {path}: {errs[0]}")
        entries = []
        for line in out.decode(errors="replace").splitlines():
            m = _LS_LINE.match(line.strip())
            if m and m.group(5) not in (".", ".."):
                ino, mode, uid, gid, name, size = m.groups()
                entries.append(
                    Entry(name, int(ino), int(mode, 8), int(uid), int(gid), int(size or 0))
                )
        return entries

    def lstat(self, path: str) -> Entry:
        parent, _, name = check_image_path(path).rpartition("/")
        for entry in self.listdir(parent or "/"):
            if entry.name == name:
                return entry
        raise ToolFailed(f"root partition: {path} not found")

    def readlink(self, path: str) -> str:
        out, errs = self._query(f"stat {check_image_path(path)}", f"stat {path}")
        m = re.search(rb'Fast link dest: "(.*)"', out)
        if errs or m is None:
            raise ToolFailed(f"root partition: {path} is not a symlink")
        return m.group(1).decode()

    def free_bytes(self) -> int:
        """Free space; refuses a filesystem whose journal still needs replaying."""
        out, errs = self._query("stats", "filesystem stats")
        text = out.decode(errors="replace")
        features = re.search(r"^Filesystem features:\s+(.*)$", text, re.MULTILINE)
        if features and "needs_recovery" in features.group(1).split():
            raise ImageError(
                "root filesystem was not cleanly unmounted (journal needs recovery): "
                "run e2fsck on the image first"
            )
        free = re.search(r"^Free blocks:\s+(\d+)", text, re.MULTILINE)
        size = re.search(r"^Block size:\s+(\d+)", text, re.MULTILINE)
        if errs or free is None or size is None:
            raise ToolFailed(f"root partition: not a readable ext4 filesystem ({errs[:1]})")
        return int(free.group(1)) * int(size.group(1))

    def apply(self, ops: list[Op]) -> None:
        """Create directories, files and symlinks in one debugfs session (replacing files)."""
        with tempfile.TemporaryDirectory(prefix="edgeflash-") as tmp:
            lines: list[str] = []
            # mkdir -p: every missing ancestor first (existing ones keep their mode).
            ancestors: set[str] = set()
            for op in ops:
                parts = check_image_path(op.path).split("/")[1:-1]
                ancestors |= {"/" + "/".join(parts[:n]) for n in range(1, len(parts) + 1)}
            lines += [f"mkdir {d}" for d in sorted(ancestors, key=lambda d: d.count("/"))]
            for i, op in enumerate(ops):
                path = check_image_path(op.path)
                if isinstance(op, Dir):
                    lines.append(f"mkdir {path}")
                    lines.append(f"sif {path} mode 0{0o040000 | op.mode:o}")
                elif isinstance(op, File):
                    src = os.path.join(tmp, str(i))
                    with open(src, "wb") as f:
                        f.write(op.data)
                    lines += [
                        f"rm {path}",
                        f'write "{src}" {path}',
                        f"sif {path} mode 0{0o100000 | op.mode:o}",
                        f"sif {path} uid {op.uid}",
                        f"sif {path} gid {op.gid}",
                    ]
                else:
                    lines += [f"rm {path}", f"symlink {path} {check_image_path(op.target)}"]
            script = os.path.join(tmp, "commands")
            with open(script, "w") as f:
                f.write("\n".join(lines) + "\n")
            proc = run_tool(["debugfs", "-w", "-f", script, self._spec], what="write root fs")
        errs = _errors(proc.stderr)
        full = [e for e in errs if _FULL.search(e)]
        if full:
            raise FilesystemFull(f"root partition is full: {full[0]}")
        if errs:
            raise ToolFailed(f"root partition: debugfs: {errs[0]}")
