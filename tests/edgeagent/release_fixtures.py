"""Releases of this tree for the slot and launcher tests: ``edgeflash bundle --arch
x86_64 --source TREE`` of a copy of the tree with its version bumped (and, for a
release that must fail, its agent broken), packed as BRIEF-17's release archive
(one plain tar: members relative and sorted, mtime 0, uid/gid 0). Built once per
test session; edgectl's packer (otagw) makes the same archive."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def pack_release(bundle: Path, out: Path) -> Path:
    """A bundle directory as one deterministic tar."""
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for rel in files:
            info = tarfile.TarInfo(rel)
            info.size = (bundle / rel).stat().st_size
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(bundle / rel, "rb") as f:
                tf.addfile(info, f)
    return out


def tree_copy(dest: Path, version: str, *, agent_patch: str | None = None) -> Path:
    """The files ``edgeflash bundle --source`` needs from this tree, with
    ``VERSION`` = ``version``; ``agent_patch`` is appended to edgeagent/_app.py
    (the module ``edgeagent run`` imports first)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for pkg in ("edgeproto", "edgeio", "edgeagent", "cloudgateway", "mappers", "firmware-tools"):
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=ignore)
    version_py = dest / "edgeagent" / "_version.py"
    text = version_py.read_text()
    version_py.write_text(re.sub(r'VERSION = "[^"]*"', f'VERSION = "{version}"', text))
    if agent_patch is not None:
        app = dest / "edgeagent" / "_app.py"
        app.write_text(app.read_text() + "\n" + agent_patch + "\n")
    return dest


def build_release(work: Path, version: str, *, agent_patch: str | None = None) -> Path:
    """The release archive of this tree at ``version``: ``work/edgeflock-<version>.tar``."""
    src = tree_copy(work / f"src-{version}", version, agent_patch=agent_patch)
    bundle = work / f"bundle-{version}"
    subprocess.run(
        [str(BIN / "edgeflash"), "bundle", "--arch", "x86_64", "--source", str(src),
         "--output", str(bundle)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    archive = pack_release(bundle, work / f"edgeflock-{version}.tar")
    shutil.rmtree(src)
    return archive
