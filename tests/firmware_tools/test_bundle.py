"""``edgeflash bundle``: the project's wheel, manifest and SHA256SUMS (no PyPI here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from firmware_tools import BadInput, load_bundle
from firmware_tools._bundle import platform_tags, sha256_file
from firmware_tools._firstboot import agent_unit

from .conftest import assert_one_line_error, edgeflash


def test_bundle_manifest_and_sums(project_bundle: Path) -> None:
    manifest = json.loads((project_bundle / "manifest.json").read_text())
    assert manifest["arch"] == "aarch64" and manifest["python"] == "3.11"
    assert manifest["project"]["name"] == "edgeflock"
    paths = [f["path"] for f in manifest["files"]]
    assert (
        len(paths) == 1
        and paths[0].startswith("wheels/edgeflock-")
        and paths[0].endswith("-py3-none-any.whl")
    )
    with zipfile.ZipFile(project_bundle / paths[0]) as zf:
        names = zf.namelist()
    for module in ("edgeagent/_cli.py", "edgeproto/__init__.py", "firmware_tools/cli.py"):
        assert module in names
    assert any(n.endswith("entry_points.txt") for n in names)
    check = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=project_bundle, capture_output=True, text=True
    )
    assert check.returncode == 0 and f"{paths[0]}: OK" in check.stdout
    bundle = load_bundle(project_bundle)
    assert bundle.files[0].size == (project_bundle / paths[0]).stat().st_size
    assert not bundle.components.mosquitto and not bundle.components.containerd


def test_bundle_carries_debs_and_images(tmp_path: Path, project_bundle: Path) -> None:
    """A bundle with mosquitto/containerd packages gets their units in the image."""
    b = tmp_path / "b"
    shutil.copytree(project_bundle, b)
    (b / "debs").mkdir()
    (b / "debs/mosquitto_2.0.11-1.2_arm64.deb").write_bytes(b"!<arch>\n")
    # Files the manifest does not list are not part of the bundle.
    assert not load_bundle(b).components.mosquitto
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"].append(
        {
            "path": "debs/mosquitto_2.0.11-1.2_arm64.deb",
            "size": 8,
            "sha256": sha256_file(b / "debs/mosquitto_2.0.11-1.2_arm64.deb"),
        }
    )
    (b / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(b).components.mosquitto
    assert "--mqtt tcp://127.0.0.1:1883" in agent_unit(load_bundle(b).components)


def test_corrupt_bundle_is_refused(tmp_path: Path, project_bundle: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(project_bundle, b)
    wheel = next((b / "wheels").iterdir())
    data = bytearray(wheel.read_bytes())
    data[100] ^= 0xFF
    wheel.write_bytes(bytes(data))
    with pytest.raises(BadInput, match=r"does not match manifest\.json"):
        load_bundle(b)
    (b / "manifest.json").write_text("{")
    with pytest.raises(BadInput, match="unreadable bundle manifest"):
        load_bundle(b)


def test_platform_tags_ask_for_manylinux_2_28() -> None:
    arm64 = platform_tags("aarch64")
    assert "manylinux_2_28_aarch64" in arm64 and "manylinux2014_aarch64" in arm64
    assert "manylinux_2_36_aarch64" in arm64 and "manylinux_2_38_aarch64" not in arm64
    assert "linux_armv7l" in platform_tags("armv7l")
    assert "manylinux_2_17_x86_64" in platform_tags("x86_64")  # amd64 boards
    with pytest.raises(BadInput):
        platform_tags("riscv64")


def test_bundle_cli_errors(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full/x").write_text("x")
    assert_one_line_error(
        edgeflash("bundle", "--arch", "aarch64", "--python", "3.11", "--output", tmp_path / "full"),
        "not empty",
    )
    assert_one_line_error(
        edgeflash("bundle", "--arch", "aarch64", "--python", "py3", "--output", tmp_path / "o"),
        "--python must look like 3.11",
    )
