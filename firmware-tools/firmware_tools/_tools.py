"""Running the external tools (mtools, e2fsprogs) with a clean environment."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence

from ._errors import BadInput, ToolFailed

__all__ = ["check_image_path", "require", "run_tool"]

# Paths inside a filesystem image: plain names only, so nothing needs quoting for
# debugfs's or mtools' own command parsers.
_SAFE_PATH = re.compile(r"^/(?:[A-Za-z0-9._@+~%,-]+/)*[A-Za-z0-9._@+~%,-]+$")

_ENV = {
    "MTOOLSRC": os.devnull,  # ignore ~/.mtoolsrc and /etc/mtools.conf quirks
    "MTOOLS_SKIP_CHECK": "1",
    "LC_ALL": "C",
}


def check_image_path(path: str) -> str:
    if not _SAFE_PATH.match(path) or "/../" in path + "/" or "/./" in path + "/":
        raise BadInput(f"path {path!r} inside the image must be absolute and plain")
    return path


def require(tool: str) -> str:
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if found is None:
        package = {"mcopy": "mtools", "mmd": "mtools", "mdir": "mtools"}.get(tool, "e2fsprogs")
        raise ToolFailed(f"{tool} not found: install the Debian package {package}")
    return found


def run_tool(
    argv: Sequence[str], *, stdin: bytes | None = None, what: str
) -> subprocess.CompletedProcess[bytes]:
    """Run a tool, capturing output; ToolFailed (with its stderr) on a non-zero exit."""
    exe = require(argv[0])
    env = dict(os.environ)
    env.update(_ENV)
    try:
        proc = subprocess.run(
            [exe, *argv[1:]], input=stdin, capture_output=True, env=env, check=False
        )
    except OSError as exc:
        raise ToolFailed(f"{what}: cannot run {argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise ToolFailed(f"{what}: {argv[0]} failed: {first_line(proc.stderr)}")
    return proc


def first_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    return lines[0] if lines else "(no message)"
