"""``edgeflash inspect``: the partitions of an image and what edgeflash put there."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ._disk import read_layout
from ._errors import BadInput, FlashError
from ._ext4 import Ext4Volume
from ._fat import FatVolume
from ._firstboot import MANIFEST_PATH
from ._image import FAT_TYPES, LINUX_TYPE, MBR_SIZE, parse_mbr

__all__ = ["inspect_image", "render_text"]

_TYPE_NAMES = {0x0B: "FAT32", 0x0C: "FAT32 (LBA)", 0x0E: "FAT16 (LBA)", 0x06: "FAT16"}


def inspect_image(image: Path) -> dict[str, Any]:
    if not image.is_file():
        raise BadInput(f"{image}: no such image file")
    with open(image, "rb") as f:
        parts = parse_mbr(f.read(MBR_SIZE))
    report: dict[str, Any] = {
        "image": str(image),
        "size": image.stat().st_size,
        "partitions": [
            {
                "number": p.number,
                "type": f"{p.type_id:#04x}",
                "type_name": _TYPE_NAMES.get(
                    p.type_id, "Linux" if p.type_id == LINUX_TYPE else "other"
                ),
                "bootable": p.bootable,
                "start": p.offset,
                "size": p.size,
                "role": "boot"
                if p.type_id in FAT_TYPES
                else ("root" if p.type_id == LINUX_TYPE else None),
            }
            for p in parts
        ],
        "prepared": False,
        "files": [],
    }
    _parts, layout = read_layout(str(image))
    root = Ext4Volume(str(image), layout.root.offset)
    boot = FatVolume(str(image), layout.boot.offset)
    report["root_free"] = root.free_bytes()
    if not root.exists(MANIFEST_PATH):
        return report
    try:
        manifest = json.loads(root.read(MANIFEST_PATH))
        entries = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FlashError(f"{MANIFEST_PATH} in the image is unreadable: {exc}") from exc
    report["prepared"] = True
    report["node"] = manifest.get("node")
    report["gateway"] = manifest.get("gateway")
    report["ca_pin"] = manifest.get("ca_pin")
    report["bundle"] = manifest.get("bundle")
    for e in entries:
        vol = root if e["partition"] == "root" else boot
        try:
            data = vol.read(e["path"])
            status = "ok" if hashlib.sha256(data).hexdigest() == e["sha256"] else "modified"
        except FlashError:
            status = "missing"
        report["files"].append(
            {
                "partition": e["partition"],
                "path": e["path"],
                "size": e["size"],
                "sha256": e["sha256"],
                "status": status,
            }
        )
    return report


def render_text(report: dict[str, Any]) -> str:
    mib = 1 << 20
    lines = [f"{report['image']}: {report['size'] / mib:.1f} MiB, MBR"]
    for p in report["partitions"]:
        lines.append(
            f"  p{p['number']}  {p['type']} {p['type_name']:<12} start {p['start']:>12}  "
            f"size {p['size'] / mib:9.1f} MiB  {p['role'] or ''}"
        )
    lines.append(f"  root filesystem free: {report['root_free'] / mib:.1f} MiB")
    if not report["prepared"]:
        lines.append("not prepared by edgeflash")
        return "\n".join(lines)
    lines.append(f"prepared for node {report['node']} -> {report['gateway']} ({report['ca_pin']})")
    if report["bundle"]:
        lines.append(f"bundle: {report['bundle']['arch']}, Python {report['bundle']['python']}")
    for f in report["files"]:
        lines.append(
            f"  {f['status']:<8} {f['partition']}:{f['path']:<52} {f['size']:>10}  {f['sha256']}"
        )
    return "\n".join(lines)
