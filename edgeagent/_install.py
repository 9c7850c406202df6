"""Installing one release into its slot: ``releases/<version>.tmp`` is filled
(the release's files checked against its ``SHA256SUMS``, a venv made from the
base interpreter, the wheels installed offline by pip), its marker written
after a sync, then it is renamed to ``releases/<version>``.

Standard library only (``edgeagent launch`` and first boot run it with nothing
else installed). The slots' API is ``edgeagent._slots``; this module is its
install step.

Speed: packages whose wheel is byte for byte the one the current release was
installed from are not installed again but hard-linked from the current
release's venv, file by file as their ``RECORD`` lists them (scripts are copied
with their interpreter line pointed at the new venv). Files are never changed
in place in an installed venv (pip replaces, Python writes ``.pyc`` by rename),
so the shared inodes are safe; anything unexpected (a missing file, a RECORD
naming a path outside the venv, another Python) falls back to pip for that
package. pip installs the rest with ``--no-deps`` over the exact wheel set.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = [
    "MARKER",
    "RELEASE_INFO",
    "InstallError",
    "Release",
    "build_venv",
    "disk_full",
    "read_archive",
    "read_bundle_dir",
]

MARKER = ".edgeflock-installed"  # a release counts as installed only with this file
RELEASE_INFO = ".edgeflock-release.json"  # {"wheels": {file: sha256}, "python": "3.11"}
_CHUNK = 1 << 20
_SMALL = 4 << 20  # manifest.json, SHA256SUMS: read whole, at most this big
_SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
_WHEEL_DIR = "wheels/"
# What the board never runs, left out of its -OO bytecode.
_NOT_ON_BOARD = (
    r"/site-packages/(pip|setuptools|pkg_resources|_distutils_hack|cloudgateway)/|/_?tests/"
)
# pip's venv tooling, carried over from the current release when it has them
_TOOLING = ("pip", "setuptools")
_BIN_SCRIPT_MAX = 1 << 20


class InstallError(Exception):
    """Why a release cannot be installed (``str`` is the reason)."""


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True, slots=True)
class Release:
    """A release's files checked against its SHA256SUMS: where its wheels are
    now, their hashes, and the version its manifest names."""

    version: str
    arch: str
    wheels_dir: Path
    wheels: dict[str, str]  # file name under wheels/ -> sha256


# -- the release's files ---------------------------------------------------------


def _safe_member(name: str) -> str:
    """A member name as a relative, normalised "/"-path, or InstallError."""
    if not name or "\0" in name or "\\" in name or name.startswith("/"):
        raise InstallError(f"release archive member {name!r}: not a relative path")
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InstallError(f"release archive member {name!r}: not a plain relative path")
    return "/".join(parts)


def _kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return f"a symbolic link to {m.linkname!r}"
    if m.islnk():
        return f"a hard link to {m.linkname!r}"
    if m.ischr() or m.isblk():
        return "a device"
    if m.isfifo():
        return "a FIFO"
    return f"of tar type {m.type!r}"


def _parse_sums(text: bytes) -> dict[str, str]:
    sums: dict[str, str] = {}
    for n, line in enumerate(text.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        m = _SUM_LINE.match(line)
        if m is None:
            raise InstallError(f"SHA256SUMS line {n} is not '<sha256>  <path>'")
        path = _safe_member(m.group(2))
        if path in sums:
            raise InstallError(f"SHA256SUMS names {path} twice")
        sums[path] = m.group(1)
    if not sums:
        raise InstallError("SHA256SUMS is empty")
    return sums


def _parse_manifest(text: bytes | None) -> tuple[str, str]:
    if text is None:
        raise InstallError("the release has no manifest.json")
    try:
        raw = json.loads(text)
        version, arch = raw["project"]["version"], raw["arch"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InstallError(f"manifest.json is not a bundle manifest ({exc})") from None
    if not isinstance(version, str) or not isinstance(arch, str):
        raise InstallError("manifest.json: project.version and arch must be strings")
    return version, arch


def _check(
    found: dict[str, str], sums: dict[str, str], manifest: bytes | None, version: str
) -> tuple[str, dict[str, str]]:
    """Every file SHA256SUMS lists is there with its hash, and nothing else is."""
    for path, sha in sorted(sums.items()):
        got = found.get(path)
        if got is None:
            raise InstallError(f"the release lacks {path}, which SHA256SUMS lists")
        if got != sha:
            raise InstallError(f"{path} does not match its SHA256SUMS entry (corrupt release)")
    extra = sorted(set(found) - set(sums))
    if extra:
        raise InstallError(f"{extra[0]} is in the release but not in its SHA256SUMS")
    named, arch = _parse_manifest(manifest)
    if named != version:
        raise InstallError(f"the release is edgeflock {named}, not {version}")
    wheels = {p[len(_WHEEL_DIR) :]: sha for p, sha in found.items() if p.startswith(_WHEEL_DIR)}
    if not any(w.startswith("edgeflock-") for w in wheels):
        raise InstallError("the release has no edgeflock wheel")
    return arch, wheels


def _write_new(path: Path, src: IO[bytes], h: hashlib._Hash) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)


def read_archive(archive: Path, version: str, dest: Path) -> Release:
    """Check a release archive (one plain tar) and extract its wheels into
    ``dest/wheels``. Only regular files and directories with plain relative
    names are accepted (no links, devices, absolute paths or ``..``); every
    file is hashed while it streams by and checked against SHA256SUMS."""
    wheels_dir = dest / "wheels"
    wheels_dir.mkdir(parents=True)
    found: dict[str, str] = {}
    small: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:") as tf:
            for m in tf:
                name = _safe_member(m.name)
                if m.isdir():
                    continue
                if not m.isreg():
                    raise InstallError(f"release archive member {name} is {_kind(m)}: refused")
                if name in found:
                    raise InstallError(f"release archive holds {name} twice")
                src = tf.extractfile(m)
                if src is None:  # pragma: no cover - isreg() members always have data
                    raise InstallError(f"release archive member {name} has no data")
                h = hashlib.sha256()
                top, _, rest = name.partition("/")
                if name in ("SHA256SUMS", "manifest.json"):
                    if m.size > _SMALL:
                        raise InstallError(f"{name} is {m.size} bytes: too big")
                    small[name] = data = src.read()
                    h.update(data)
                elif top + "/" == _WHEEL_DIR and rest and "/" not in rest:
                    _write_new(wheels_dir / rest, src, h)
                else:  # images/, debs/: checked here, not used by an agent upgrade
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                found[name] = h.hexdigest()
    except FileNotFoundError:
        raise InstallError(f"{archive}: no such release archive") from None
    except (tarfile.TarError, EOFError) as exc:
        raise InstallError(f"{archive} is not a release archive (a plain tar): {exc}") from None
    sums_text = small.pop("SHA256SUMS", None)
    if sums_text is None:
        raise InstallError("the release has no SHA256SUMS")
    found.pop("SHA256SUMS")
    manifest = small.get("manifest.json")
    found.pop("manifest.json", None)
    arch, wheels = _check(found, _parse_sums(sums_text), manifest, version)
    return Release(version, arch, wheels_dir, wheels)


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_bundle_dir(root: Path, version: str) -> Release:
    """An ``edgeflash bundle`` directory (first boot): every file SHA256SUMS lists
    is checked in place (no symbolic links followed); the wheels are used from
    there."""
    try:
        sums = _parse_sums((root / "SHA256SUMS").read_bytes())
    except FileNotFoundError:
        raise InstallError(f"{root} has no SHA256SUMS: not a release bundle") from None
    found: dict[str, str] = {}
    for path in sums:
        try:
            found[path] = _sha256_of(root / path)
        except FileNotFoundError:
            continue  # reported by _check as missing
        except OSError as exc:
            raise InstallError(f"{path}: {exc.strerror or exc}") from None
    try:
        manifest: bytes | None = (root / "manifest.json").read_bytes()
    except FileNotFoundError:
        manifest = None
    arch, wheels = _check(found, sums, manifest, version)
    return Release(version, arch, root / "wheels", wheels)


# -- the venv --------------------------------------------------------------------


def base_python() -> str:
    """The interpreter venvs are made from: the system's, never a venv's."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base) if os.path.exists(base) else sys.executable


PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def _site(venv: Path) -> Path:
    return venv / "lib" / f"python{PYTHON}" / "site-packages"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pin_of(wheel: str) -> tuple[str, str] | None:
    """(project name, version) from a wheel's or an sdist's file name."""
    if wheel.endswith(".whl"):
        parts = wheel[:-4].split("-")
        return (parts[0], parts[1]) if len(parts) in (5, 6) else None
    for ext in (".tar.gz", ".zip", ".tar.bz2"):
        if wheel.endswith(ext):
            name, _, ver = wheel[: -len(ext)].rpartition("-")
            return (name, ver) if name and ver else None
    return None


def _run(argv: list[str], what: str, *, cwd: Path | None = None) -> None:
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    proc = subprocess.run(
        argv, cwd=cwd or "/", env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode == 0:
        return
    text = (proc.stderr or "") + (proc.stdout or "")
    if "No space left on device" in text or "[Errno 28]" in text:
        raise OSError(errno.ENOSPC, f"{what}: no space left on device")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:] or ["(no message)"]
    message = errors[0]
    if len(message) > 300:
        message = message[:300] + "..."
    raise InstallError(f"{what}: {message}")


@dataclass(frozen=True, slots=True)
class _Dist:
    name: str
    dist_info: Path
    files: tuple[str, ...]  # RECORD's paths, relative to site-packages


def _installed(site: Path) -> dict[str, _Dist]:
    """Installed distributions of a venv by normalised "name-version"."""
    out: dict[str, _Dist] = {}
    try:
        entries = list(site.iterdir())
    except OSError:
        return out
    for d in entries:
        if not d.name.endswith(".dist-info") or not d.is_dir():
            continue
        name, _, version = d.name[: -len(".dist-info")].rpartition("-")
        try:
            with open(d / "RECORD", newline="") as f:
                files = tuple(row[0] for row in csv.reader(f) if row)
        except (OSError, csv.Error, UnicodeDecodeError):
            continue
        out[f"{_norm(name)}-{version}"] = _Dist(_norm(name), d, files)
    return out


def _relocate(data: bytes, old: Path, new: Path) -> bytes:
    return data.replace(os.fsencode(old) + b"/", os.fsencode(new) + b"/")


def _link_dist(dist: _Dist, old_venv: Path, new_venv: Path, final: Path) -> None:
    """Hard-link one installed distribution from ``old_venv`` into ``new_venv``
    (its dist-info last, so that a half-linked one is not installed as far as
    pip is concerned); scripts in bin/ are copied, their interpreter path
    pointed at ``final`` (where ``new_venv`` will be). OSError or InstallError
    when it cannot: the caller undoes and lets pip install it instead."""
    old_site, new_site = _site(old_venv), _site(new_venv)
    info_rel = dist.dist_info.name + "/"
    ordered = sorted(dist.files, key=lambda p: p.startswith(info_rel))
    for rel in ordered:
        src = Path(os.path.normpath(old_site / rel))
        if not src.is_relative_to(old_venv):
            raise InstallError(f"{dist.name}: RECORD names {rel}, outside the venv")
        dst = new_venv / src.relative_to(old_venv)
        if src.suffix == ".pyc":
            # The services' -OO bytecode (not in RECORD) goes along with the plain one.
            opt2 = src.with_name(src.name[: -len(".pyc")] + ".opt-2.pyc")
            if opt2.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    os.link(opt2, dst.with_name(opt2.name), follow_symlinks=False)
            if not src.exists():
                continue  # compiled later on import if needed
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.parent == old_venv / "bin":
            st = src.lstat()
            if st.st_size > _BIN_SCRIPT_MAX:
                raise InstallError(f"{dist.name}: {src.name} is too big for a script")
            dst.write_bytes(_relocate(src.read_bytes(), old_venv, final))
            os.chmod(dst, st.st_mode & 0o7777)
            continue
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copy2(src, dst, follow_symlinks=False)
    if not (new_site / info_rel / "RECORD").exists():
        raise InstallError(f"{dist.name}: its RECORD does not list itself")


def _unlink_dist(dist: _Dist, new_venv: Path, old_venv: Path) -> None:
    old_site = _site(old_venv)
    for rel in dist.files:
        src = Path(os.path.normpath(old_site / rel))
        if src.is_relative_to(old_venv):
            (new_venv / src.relative_to(old_venv)).unlink(missing_ok=True)
    shutil.rmtree(new_venv / dist.dist_info.relative_to(old_venv), ignore_errors=True)


def _reusable(release: Release, current: Path | None) -> tuple[Path | None, list[_Dist]]:
    """The current release's installed distributions whose wheels are identical
    in ``release`` (plus pip's tooling), when the current venv is one of ours on
    this Python."""
    if current is None:
        return None, []
    try:
        info = json.loads((current / RELEASE_INFO).read_text())
        old_wheels = info["wheels"]
        same_python = info["python"] == PYTHON
    except (OSError, ValueError, KeyError, TypeError):
        return None, []
    if not same_python or not isinstance(old_wheels, dict) or not (current / MARKER).is_file():
        return None, []
    installed = _installed(_site(current))
    out: list[_Dist] = []
    for wheel, sha in release.wheels.items():
        pin = pin_of(wheel)
        if pin is None or old_wheels.get(wheel) != sha or pin[0] == "edgeflock":
            continue
        dist = installed.get(f"{_norm(pin[0])}-{pin[1]}")
        if dist is not None:
            out.append(dist)
    wanted = {_norm(pin[0]) for w in release.wheels if (pin := pin_of(w)) is not None}
    out += [d for d in installed.values() if d.name in _TOOLING and d.name not in wanted]
    return current, out


_CHECK = """\
import importlib.metadata as m, re, sys
v = m.version("edgeflock")
if v != sys.argv[1]:
    sys.exit(f"edgeflock {v} is installed, not {sys.argv[1]}")
missing = []
for r in m.requires("edgeflock") or []:
    if ";" in r:
        continue
    name = re.split(r"[\\s<>=!~\\[(]", r, maxsplit=1)[0]
    try:
        m.version(name)
    except m.PackageNotFoundError:
        missing.append(name)
if missing:
    sys.exit("the release lacks " + ", ".join(missing) + " (a bundle made with --no-deps?)")
"""


def build_venv(release: Release, tmp: Path, final: Path, current: Path | None) -> dict[str, object]:
    """Make the venv of ``release`` in ``tmp`` (to be renamed ``final``): what it
    reused and installed, for the caller's log."""
    old, reuse = _reusable(release, current)
    reuse_pip = any(d.name == "pip" for d in reuse)
    argv = [base_python(), "-m", "venv"]
    if reuse_pip:
        argv.append("--without-pip")
    _run([*argv, str(tmp)], "creating the venv")
    linked: list[str] = []
    if old is not None:
        for dist in reuse:
            try:
                _link_dist(dist, old, tmp, final)
                linked.append(dist.name)
            except (OSError, InstallError) as exc:
                if disk_full(exc):
                    raise
                _unlink_dist(dist, tmp, old)
    python = str(tmp / "bin" / "python")
    if reuse_pip and "pip" not in linked:
        _run([python, "-m", "ensurepip", "--default-pip"], "installing pip into the venv")
    done = {_norm(n) for n in linked}
    pins = sorted(
        f"{name}=={ver}"
        for w in release.wheels
        if (p := pin_of(w)) is not None
        for name, ver in [p]
        if _norm(name) not in done
    )
    pip = [python, "-m", "pip", "--isolated", "--disable-pip-version-check", "--no-input"]
    pip += ["install", "--quiet", "--no-index", "--no-cache-dir", "--no-deps"]
    _run([*pip, "--find-links", str(release.wheels_dir), *pins], "pip could not install it")
    _relocate_scripts(tmp, final)
    # The board's units run Python with PYTHONOPTIMIZE=2: its bytecode (.opt-2.pyc)
    # written now, so that no start compiles the release's modules (a process that
    # compiles its imports keeps ~2 MiB more); not pip's, setuptools', the gateway's
    # or tests (never run on a board). Reused packages brought theirs along.
    _run(
        [python, "-OO", "-m", "compileall", "-q", "-j", "0", "-x", _NOT_ON_BOARD,
         "-s", str(tmp), "-p", str(final), str(tmp / "lib")],
        "compiling its -OO bytecode",
    )  # fmt: skip
    _run([python, "-c", _CHECK, release.version], "the installed release does not work")
    return {"reused": sorted(linked), "installed": pins}


def _relocate_scripts(tmp: Path, final: Path) -> None:
    """pip wrote ``tmp``'s absolute path into the scripts' interpreter lines (and
    venv into activate*): point them at ``final``, where the venv will be."""
    for entry in (tmp / "bin").iterdir():
        if entry.is_symlink() or not entry.is_file():
            continue
        st = entry.stat()
        if st.st_size > _BIN_SCRIPT_MAX:
            continue
        data = entry.read_bytes()
        new = _relocate(data, tmp, final)
        if new == data:
            continue
        staged = entry.with_name(f".{entry.name}.relocated")
        staged.write_bytes(new)
        os.chmod(staged, st.st_mode & 0o7777)
        os.replace(staged, entry)


def write_release_info(venv: Path, release: Release) -> None:
    info = {
        "version": release.version,
        "arch": release.arch,
        "python": PYTHON,
        "wheels": dict(sorted(release.wheels.items())),
    }
    (venv / RELEASE_INFO).write_text(json.dumps(info, indent=1) + "\n")


def remove_tree(path: Path) -> None:
    """Remove a file, symbolic link or directory tree, if there."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path)
