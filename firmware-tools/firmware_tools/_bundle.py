"""The offline bundle: a wheelhouse for the board plus optional .debs and OCI archives.

Layout of a bundle directory::

    manifest.json   arch, python, project, components, files (path, size, sha256)
    SHA256SUMS      the same hashes, for ``sha256sum -c`` on the board
    wheels/*.whl    the project and its dependencies for the target
    debs/*.deb      optional: mosquitto, containerd, runc...
    images/*.tar    optional: OCI archives, imported at first boot (``edgeagent images
                    import``); one may be the board's sandbox (pause) image
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from ._errors import BadInput, ToolFailed
from ._firstboot import Components

__all__ = ["ARCHES", "Bundle", "BundleFile", "build_bundle", "load_bundle", "platform_tags"]

ARCHES = ("aarch64", "armv7l", "x86_64")
# Raspberry Pi OS Bookworm has glibc 2.36: every manylinux up to it installs there.
_GLIBC_MINORS = (17, 24, 26, 27, 28, 31, 34, 35, 36)
_PY = re.compile(r"^3\.(\d{1,2})$")
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class BundleFile:
    path: str  # relative to the bundle directory, "/"-separated
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Bundle:
    root: Path
    arch: str
    python: str
    project_version: str
    components: Components
    files: tuple[BundleFile, ...]
    # The image name of the OCI archive that is containerd's sandbox image, if carried.
    sandbox_image: str | None = None

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def platform_tags(arch: str) -> list[str]:
    if arch not in ARCHES:
        raise BadInput(f"--arch must be one of {', '.join(ARCHES)}, not {arch!r}")
    tags = [f"manylinux_2_{m}_{arch}" for m in _GLIBC_MINORS]
    tags.append(f"manylinux2014_{arch}")
    tags.append(f"linux_{arch}")
    return tags


def _components(files: list[str]) -> Components:
    debs = [Path(f).name for f in files if f.startswith("debs/")]
    return Components(
        mosquitto=any(d.startswith("mosquitto_") for d in debs),
        containerd=any(d.startswith("containerd_") for d in debs),
    )


def _find_project() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "edgeagent").is_dir():
            return parent
    raise BadInput("cannot find the edgeflock source tree: pass --project DIR")


def _clean_copy(project: Path, dest: Path) -> Path:
    """The files a wheel is built from, copied: no stale build/ and no writes to the tree."""
    try:
        meta = tomllib.loads((project / "pyproject.toml").read_text())
        tool = meta.get("tool", {}).get("setuptools", {})
        packages: list[str] = list(tool.get("packages", []))
        package_dir: dict[str, str] = dict(tool.get("package-dir", {}))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(f"{project}/pyproject.toml: {exc}") from exc
    if not packages:
        raise BadInput(f"{project}/pyproject.toml lists no [tool.setuptools] packages")
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg"):
        if (project / name).is_file():
            shutil.copy2(project / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in packages:
        rel = package_dir.get(pkg, pkg.replace(".", "/"))
        shutil.copytree(project / rel, dest / rel, ignore=ignore, dirs_exist_ok=True)
    return dest


def _pip(args: list[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines or ["(no message)"]
        message = errors[0].strip()
        hint = "conflicting dependencies" in message or "satisfies the requirement" in message
        if len(message) > 240:
            message = message[:240] + "..."
        if hint:
            m = _NO_MATCH.search(message) or _CONFLICT.search(message)
            wheel = m.group(1) if m else "a dependency"
            message += (
                f" (no wheel of {wheel} for the target on this index: build or download one"
                f" for the board (on a board: pip wheel {wheel} -w DIR) and pass"
                " --find-links DIR, or --extra-index-url https://www.piwheels.org/simple)"
            )
        raise ToolFailed(f"{what}: {message}")


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(name).decode())
    return [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]


@dataclass(frozen=True, slots=True)
class _Index:
    """Where wheels come from besides PyPI."""

    extra_url: str | None = None
    find_links: tuple[Path, ...] = ()


_NO_MATCH = re.compile(r"satisfies the requirement ([A-Za-z0-9_.\-]+)")
# pip's backtracking ends in "Cannot install X==1, X==2..." when X has no wheel for it.
_CONFLICT = re.compile(r"Cannot install ([A-Za-z0-9_.\-]+)==")
# What pip needs to build a setuptools/Cython sdist offline on the board.
_BUILD_TOOLS = ("setuptools", "wheel", "Cython")


def _download_deps(
    wheels: Path,
    requires: list[str],
    *,
    arch: str,
    tags: list[str],
    python: str,
    minor: str,
    index: _Index,
) -> list[str]:
    """Download binary wheels for the target; a requirement that has none for this
    platform (PyYAML on armv7) is carried as an sdist plus the tools to build it, and
    returned by name."""
    base = ["download", "-q", "--only-binary=:all:", "-d", str(wheels)]
    base += ["--python-version", python, "--implementation", "cp"]
    base += ["--abi", f"cp3{minor}", "--abi", "abi3", "--abi", "none"]
    for tag in tags:
        base += ["--platform", tag]
    if index.extra_url:
        base += ["--extra-index-url", index.extra_url]
    for d in index.find_links:
        base += ["--find-links", str(d)]
    constraints = wheels / ".constraints.txt"
    # cbor2 6 ships no armv7 wheel; 5.9's pure-Python wheel is what installs there.
    constraints.write_text("cbor2<6\n" if arch == "armv7l" else "")
    base += ["-c", str(constraints)]
    sdists: list[str] = []
    pending = list(requires)
    try:
        for _ in range(len(requires) + 1):
            try:
                _pip([*base, *pending], f"downloading dependencies for {arch}")
                break
            except ToolFailed as exc:
                m = _NO_MATCH.search(str(exc))
                if m is None:
                    raise
                name = m.group(1)
                req = next((r for r in pending if _name(r) == _name(name)), None)
                if req is None:
                    raise
                pending.remove(req)
                source = ["download", "-q", "--no-deps", "--no-binary=:all:", "-d", str(wheels)]
                _pip([*source, req], f"{name} has no {arch} wheel and no sdist")
                sdists.append(_name(name))
        if sdists:
            _pip([*base, *_BUILD_TOOLS], f"downloading build tools for {arch}")
    finally:
        constraints.unlink()
    return sdists


def oci_image_name(archive: Path) -> str:
    """The image name an OCI archive's index.json gives (containerd's annotation, as
    ``ctr images import`` and ``edgeagent images import`` name it)."""
    try:
        with tarfile.open(archive) as tf:
            member = tf.extractfile("index.json")
            index = json.loads(member.read()) if member is not None else None
        manifests = index["manifests"] if isinstance(index, dict) else None
        if not isinstance(manifests, list) or not manifests:
            raise ValueError("index.json lists no manifests")
        annotations = manifests[0].get("annotations") or {}
        name = annotations.get("io.containerd.image.name")
    except tarfile.TarError:
        raise BadInput(f"{archive}: not an OCI image archive (not a tar file)") from None
    except (OSError, KeyError, ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInput(f"{archive}: not an OCI image archive ({reason})") from None
    if not isinstance(name, str) or not name:
        raise BadInput(
            f"{archive}: its index.json names no image (annotation io.containerd.image.name)"
        )
    return name


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def build_bundle(
    *,
    arch: str,
    python: str,
    output: Path,
    project: Path | None = None,
    no_deps: bool = False,
    debs: tuple[Path, ...] = (),
    images: tuple[Path, ...] = (),
    extra_index_url: str | None = None,
    find_links: tuple[Path, ...] = (),
    sandbox_image: Path | None = None,
) -> Bundle:
    tags = platform_tags(arch)
    m = _PY.match(python)
    if m is None:
        raise BadInput(f"--python must look like 3.11, not {python!r}")
    for f in (*debs, *images, *([sandbox_image] if sandbox_image else [])):
        if not f.is_file():
            raise BadInput(f"{f}: no such file")
    for d in find_links:
        if not d.is_dir():
            raise BadInput(f"--find-links {d}: no such directory")
    sandbox = oci_image_name(sandbox_image) if sandbox_image is not None else None
    if sandbox_image is not None and sandbox_image not in images:
        images = (*images, sandbox_image)
    project = project or _find_project()
    if output.exists() and any(output.iterdir()):
        raise BadInput(f"{output} exists and is not empty")
    try:
        return _build(
            arch,
            python,
            m.group(1),
            tags,
            output,
            project,
            no_deps,
            debs,
            images,
            _Index(extra_index_url, find_links),
            sandbox,
        )
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)
        raise


def _build(
    arch: str,
    python: str,
    minor: str,
    tags: list[str],
    output: Path,
    project: Path,
    no_deps: bool,
    debs: tuple[Path, ...],
    images: tuple[Path, ...],
    index: _Index,
    sandbox: str | None,
) -> Bundle:
    wheels = output / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeflash-wheel-") as tmp:
        src = _clean_copy(project, Path(tmp) / "src")
        out = str(Path(tmp) / "out")
        try:  # offline and quick, with the setuptools already here
            _pip(["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, str(src)], "")
        except ToolFailed:
            _pip(["wheel", "--no-deps", "-q", "-w", out, str(src)], "building the project wheel")
        built = sorted(Path(out).glob("edgeflock-*.whl"))
        if not built:
            raise ToolFailed("building the project wheel: pip produced no edgeflock wheel")
        own = wheels / built[0].name
        shutil.copyfile(built[0], own)
    sdists: list[str] = []
    if not no_deps:
        sdists = _download_deps(
            wheels,
            _requires(own),
            arch=arch,
            tags=tags,
            python=python,
            minor=minor,
            index=index,
        )
    for sub, items in (("debs", debs), ("images", images)):
        for f in items:
            (output / sub).mkdir(exist_ok=True)
            shutil.copyfile(f, output / sub / f.name)
    rel = sorted(
        p.relative_to(output).as_posix()
        for p in output.rglob("*")
        if p.is_file() and p.name not in ("manifest.json", "SHA256SUMS")
    )
    files = [BundleFile(r, (output / r).stat().st_size, sha256_file(output / r)) for r in rel]
    version = own.name.split("-")[1]
    components = _components(rel)
    manifest = {
        "format": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arch": arch,
        "python": python,
        "project": {"name": "edgeflock", "version": version},
        "built_on_board": sdists,
        "components": {"mosquitto": components.mosquitto, "containerd": components.containerd},
        "sandbox_image": sandbox,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files],
    }
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (output / "SHA256SUMS").write_text("".join(f"{f.sha256}  {f.path}\n" for f in files))
    return Bundle(output, arch, python, version, components, tuple(files), sandbox)


def load_bundle(root: Path) -> Bundle:
    """Read a bundle's manifest and check every file against it."""
    path = root / "manifest.json"
    try:
        raw = json.loads(path.read_text())
        files = tuple(
            BundleFile(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in raw["files"]
        )
        arch, python, version = raw["arch"], raw["python"], raw["project"]["version"]
        sandbox = raw.get("sandbox_image")
        if sandbox is not None and not isinstance(sandbox, str):
            raise ValueError("sandbox_image is not a string")
    except FileNotFoundError:
        raise BadInput(f"{root} is not a bundle (no manifest.json): run edgeflash bundle") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"{path}: unreadable bundle manifest ({exc})") from exc
    for f in files:
        p = root / f.path
        if ".." in Path(f.path).parts or Path(f.path).is_absolute():
            raise BadInput(f"{path}: bad file path {f.path!r}")
        try:
            ok = p.stat().st_size == f.size and sha256_file(p) == f.sha256
        except OSError as exc:
            raise BadInput(f"bundle file {f.path} unreadable: {exc}") from exc
        if not ok:
            raise BadInput(f"bundle file {f.path} does not match manifest.json (corrupt copy?)")
    if not any(f.path.startswith("wheels/edgeflock-") for f in files):
        raise BadInput(f"{root}: bundle has no edgeflock wheel")
    components = _components([f.path for f in files])
    return Bundle(root, arch, python, version, components, files, sandbox)
