"""Preloading images on offline boards: ``edgeagent images import FILE.tar``.

CRI has no import call, so this runs containerd's own ``ctr`` binary (shipped with
Debian's containerd package) against the same socket, in the CRI's ``k8s.io``
namespace, unpacking for the snapshotter CRI uses. Both OCI and docker-save
archives work. No grpc here: the CLI stays light."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from ._errors import EdgedError

__all__ = ["ImageImportError", "import_image"]


class ImageImportError(EdgedError):
    """The archive could not be imported."""


def _socket(address: str) -> str:
    return address.removeprefix("unix://")


def import_image(address: str, archive: Path, *, snapshotter: str = "overlayfs") -> list[str]:
    """Import ``archive`` into containerd at ``address``; returns the image names."""
    ctr = shutil.which("ctr")
    if ctr is None:
        raise ImageImportError("ctr not found: install Debian's containerd package")
    if not archive.is_file():
        raise ImageImportError(f"{archive}: no such file")
    proc = subprocess.run(
        [ctr, "--address", _socket(address), "--namespace", "k8s.io", "images", "import",
         "--snapshotter", snapshotter, str(archive)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise ImageImportError(f"{archive}: {msg[-1] if msg else 'ctr failed'}")
    names = re.findall(r"^unpacking (\S+) \(", proc.stdout, flags=re.M)
    # containerd fsyncs its metadata but not the layer files it unpacks: a power cut
    # soon after would leave images whose files are empty ("exec format error" at
    # the next start; seen on the emulated board). Flush them before saying "imported".
    os.sync()
    return names
