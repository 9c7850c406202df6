"""`edgeagent images import FILE.tar` preloads an image on an offline board; a pod
with imagePullPolicy Never then runs it."""

from __future__ import annotations

import hashlib
import io
import json
import platform
import tarfile
import uuid
from pathlib import Path

import trio

from edgeagent._cli import main

from .conftest import Node


def _blob(out: tarfile.TarFile, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}", len(data)


def write_oci_archive(path: Path, name: str) -> None:
    """A one-layer OCI image holding busybox, written by hand (no registry, no docker)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as lt:
        lt.add("/bin/busybox", arcname="bin/busybox")
    layer_bytes = layer.getvalue()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), "arm")
    with tarfile.open(path, "w") as out:
        ldig, lsize = _blob(out, layer_bytes)
        config = {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/busybox", "echo", "imported-ok"]},
            "rootfs": {"type": "layers", "diff_ids": [ldig]},
        }
        cdig, csize = _blob(out, json.dumps(config).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": cdig,
                "size": csize,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": ldig,
                    "size": lsize,
                }
            ],
        }
        mdig, msize = _blob(out, json.dumps(manifest).encode())
        index = {
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": mdig, "size": msize,
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]},
            }],
        }  # fmt: skip
        for fname, data in (
            ("index.json", json.dumps(index).encode()),
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
        ):
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


async def test_images_import_then_run_with_never_pull(
    nursery: trio.Nursery, node: Node, tmp_path: Path, capsys: object
) -> None:
    name = f"localhost/test/imported-{uuid.uuid4().hex[:6]}:1"
    archive = tmp_path / "image.tar"
    await trio.to_thread.run_sync(write_oci_archive, archive, name)
    rc = await trio.to_thread.run_sync(
        main,
        [
            "images",
            "import",
            str(archive),
            "--cri",
            node.containerd.address,
            "--data-dir",
            str(tmp_path),
        ],
    )
    assert rc == 0
    assert f"imported {name}" in capsys.readouterr().out  # type: ignore[attr-defined]
    assert (
        await trio.to_thread.run_sync(
            main, ["images", "import", str(tmp_path / "nope.tar"), "--cri", node.containerd.address]
        )
        == 1
    )

    edged = await node.start(nursery)
    pod = node.pod(
        "preloaded",
        [{"name": "main", "image": name, "imagePullPolicy": "Never"}],
        restartPolicy="Never",
    )
    await node.put(pod)
    await node.wait_status("preloaded", lambda s: s["phase"] == "Succeeded")
    logs = b"".join([c async for c in edged.read_logs("default", "preloaded", None, None, False)])
    assert logs == b"imported-ok\n"
    await trio.to_thread.run_sync(node.containerd.ctr, "images", "rm", name)
