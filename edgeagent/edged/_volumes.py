"""Pod volumes on the host: configMap and secret volumes written atomically
(kubelet's layout: ``..data`` -> ``..<stamp>/`` swapped by rename, each key a
relative symlink into ``..data``), emptyDir, hostPath. Blocking functions; the pod
worker runs them in a thread."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeio import fsync_dir, write_atomic

from ._errors import EdgedError
from ._spec import object_data

__all__ = ["MountError", "VolumeMount", "container_mounts", "prepare_volumes", "write_volume_files"]


class MountError(EdgedError):
    """A volume cannot be set up (reported as ``FailedMount``)."""


@dataclass(frozen=True, slots=True)
class VolumeMount:
    container_path: str
    host_path: str
    readonly: bool


def _files(vol_src: Mapping[str, Any], data: dict[str, bytes], name: str) -> dict[str, bytes]:
    items = vol_src.get("items")
    if not items:
        return dict(data)
    out: dict[str, bytes] = {}
    for item in items:
        key = str(item.get("key"))
        if key not in data:
            if vol_src.get("optional"):
                continue
            raise MountError(f'configmap/secret "{name}": key "{key}" not found')
        out[str(item.get("path") or key)] = data[key]
    return out


def write_volume_files(target: Path, files: Mapping[str, bytes], mode: int) -> bool:
    """Make ``target`` hold exactly ``files`` (relative paths), swapped in at once:
    the files are written durably (:func:`edgeio.write_atomic`) into a new
    ``..<stamp>/`` directory, then the ``..data`` link is renamed onto it. Returns
    False when ``target`` already held them. On any error ``target`` is left as it
    was and the new directory removed."""
    for rel in files:
        if not rel or rel.startswith("/") or ".." in Path(rel).parts:
            raise MountError(f"invalid volume path {rel!r}")
    target.mkdir(parents=True, exist_ok=True)
    data_link = target / "..data"
    if data_link.is_symlink() and _holds(target / os.readlink(data_link), files):
        return False
    stamp = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns() % 10**9}"
    new_dir = target / stamp
    new_dir.mkdir()
    swap = target / f"..data_tmp.{stamp}"
    try:
        for rel, content in files.items():
            p = new_dir / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(p, content, mode)
        for d in {p.parent for p in new_dir.rglob("*")}:
            fsync_dir(d)  # the subdirectories' own entries
        swap.symlink_to(stamp)
        os.replace(swap, data_link)  # the swap; made durable by fsync_dir(target) below
    except BaseException:
        swap.unlink(missing_ok=True)
        shutil.rmtree(new_dir, ignore_errors=True)
        raise
    tops = {Path(rel).parts[0] for rel in files}
    for top in tops:
        if not (target / top).is_symlink():
            (target / top).symlink_to(f"..data/{top}")
    for entry in target.iterdir():
        if entry.name.startswith(".."):
            if entry.name not in ("..data", stamp):  # the old data, or left by a crash
                if entry.is_symlink():
                    entry.unlink()
                else:
                    shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_symlink() and entry.name not in tops:
            entry.unlink()
    fsync_dir(target)
    return True


def _holds(directory: Path, files: Mapping[str, bytes]) -> bool:
    """True when ``directory`` holds exactly ``files``."""
    if not directory.is_dir():
        return False
    have = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}
    return have == set(files) and all(
        (directory / rel).read_bytes() == content for rel, content in files.items()
    )


def prepare_volumes(
    pod: Mapping[str, Any], pod_dir: Path, objects: Mapping[str, Mapping[str, Any] | None]
) -> dict[str, str]:
    """Create or update every volume of ``pod``; returns volume name -> host path.
    Raises :class:`MountError` naming the first volume that cannot be set up."""
    ns = str((pod.get("metadata") or {}).get("namespace") or "default")
    out: dict[str, str] = {}
    for vol in (pod.get("spec") or {}).get("volumes") or []:
        name = str(vol.get("name") or "")
        vdir = pod_dir / "volumes" / name
        if "configMap" in vol or "secret" in vol:
            is_cm = "configMap" in vol
            src = vol.get("configMap") if is_cm else vol.get("secret")
            src = src or {}
            obj_name = str(src.get("name") if is_cm else src.get("secretName"))
            key = f"{'configmaps' if is_cm else 'secrets'}/{ns}/{obj_name}"
            obj = objects.get(key)
            if obj is None and not src.get("optional"):
                kind = "configmap" if is_cm else "secret"
                raise MountError(f'volume "{name}": {kind} "{obj_name}" not found')
            files = _files(src, object_data(obj), obj_name)
            mode = int(src.get("defaultMode", 0o644)) & 0o777
            write_volume_files(vdir, files, mode)
            out[name] = str(vdir)
        elif "emptyDir" in vol:
            vdir.mkdir(parents=True, exist_ok=True)
            vdir.chmod(0o777)
            out[name] = str(vdir)
        elif "hostPath" in vol:
            hp = vol.get("hostPath") or {}
            path = Path(str(hp.get("path") or ""))
            kind = str(hp.get("type") or "")
            if not path.is_absolute():
                raise MountError(f'volume "{name}": hostPath must be absolute')
            if kind == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate" and not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            elif kind in ("Directory", "File", "Socket") and not path.exists():
                raise MountError(f'volume "{name}": hostPath {path} does not exist')
            out[name] = str(path)
        else:
            raise MountError(f'volume "{name}": unsupported volume type')
    return out


def container_mounts(
    pod: Mapping[str, Any], container: Mapping[str, Any], volumes: Mapping[str, str]
) -> list[VolumeMount]:
    read_only_types = {
        str(v.get("name")): ("configMap" in v or "secret" in v)
        for v in (pod.get("spec") or {}).get("volumes") or []
    }
    out = []
    for vm in container.get("volumeMounts") or []:
        name = str(vm.get("name") or "")
        if name not in volumes:
            raise MountError(f'volumeMount "{name}": no such volume')
        host = volumes[name]
        sub = str(vm.get("subPath") or "")
        if sub:
            if sub.startswith("/") or ".." in Path(sub).parts:
                raise MountError(f'volumeMount "{name}": invalid subPath {sub!r}')
            host = os.path.join(host, sub)
            if not os.path.exists(host):
                os.makedirs(host, exist_ok=True)
        ro = bool(vm.get("readOnly")) or read_only_types.get(name, False)
        out.append(VolumeMount(str(vm.get("mountPath") or ""), host, ro))
    return out
