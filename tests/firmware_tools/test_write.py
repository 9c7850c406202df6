"""``edgeflash write``: to a regular file and to a real loop device, with read-back
verification; refusals for the system disk, partitions, mounted and fixed disks."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from firmware_tools import UnsafeTarget, check_target, write_image
from firmware_tools._write import format_progress, system_disks

from .conftest import MIB, PiImage, assert_one_line_error, edgeflash, sha256


def _root_disk() -> Path:
    """The block device backing /, found independently of the code under test."""
    majmin = subprocess.run(
        ["findmnt", "-n", "-o", "MAJ:MIN", "/"], capture_output=True, text=True, check=True
    ).stdout.strip()
    uevent = Path(f"/sys/dev/block/{majmin}/uevent").read_text()
    name = next(ln.split("=", 1)[1] for ln in uevent.splitlines() if ln.startswith("DEVNAME="))
    return Path("/dev") / name


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    backing = tmp_path / "card.bin"
    with open(backing, "wb") as f:
        f.truncate(96 * MIB)
    dev = subprocess.run(
        ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield Path(dev)
    finally:
        subprocess.run(["umount", "-q", str(tmp_path / "mnt")], check=False)
        subprocess.run(["partx", "-d", dev], capture_output=True, check=False)
        subprocess.run(["losetup", "-d", dev], check=True)


def test_write_to_file_with_progress_and_verify(pi_image: PiImage, tmp_path: Path) -> None:
    card = tmp_path / "card.img"
    card.write_bytes(b"\xff" * (80 * MIB))  # old contents longer than the image
    want = sha256(pi_image.path)
    proc = edgeflash(
        "write", "--image", pi_image.path, "--device", card, "--progress", "--block-size", "1"
    )
    assert proc.returncode == 0, proc.stderr
    assert f"verified: sha256 {want}" in proc.stdout
    assert "MiB/s" in proc.stderr and "100.0%" in proc.stderr and "done" in proc.stderr
    assert sha256(card) == want  # a file target is truncated to the image
    assert sha256(pi_image.path) == want


def test_write_api_reports_rate(pi_image: PiImage, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    result = write_image(
        pi_image.path,
        check_target(tmp_path / "new.img"),
        block_size=MIB,
        progress=lambda done, total, _t: seen.append((done, total)),
    )
    assert result.bytes == 64 * MIB and result.write_rate > 0
    assert result.sha256 == sha256(pi_image.path)
    assert seen[-1] == (64 * MIB, 64 * MIB)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_refuses_the_system_disk() -> None:
    disk = _root_disk()
    assert disk.name in system_disks()
    with pytest.raises(UnsafeTarget, match="running system"):
        check_target(disk, force=True)
    # The CLI refuses before it would ask for confirmation, even with --force.
    proc = edgeflash("write", "--image", "/dev/null", "--device", disk, "--force")
    assert_one_line_error(proc, "running system")


def test_loop_device_write_verify_and_refusals(
    pi_image: PiImage, loop_device: Path, tmp_path: Path
) -> None:
    # Not removable: refused unless forced; no --yes and no tty: refused.
    with pytest.raises(UnsafeTarget, match="not a removable disk"):
        check_target(loop_device)
    assert_one_line_error(
        edgeflash("write", "--image", pi_image.path, "--device", loop_device),
        "not a removable disk",
    )
    assert_one_line_error(
        edgeflash("write", "--image", pi_image.path, "--device", loop_device, "--force"),
        "pass --yes",
    )
    proc = edgeflash("write", "--image", pi_image.path, "--device", loop_device, "--force", "--yes")
    assert proc.returncode == 0, proc.stderr
    want = sha256(pi_image.path)
    assert f"verified: sha256 {want}" in proc.stdout
    with open(loop_device, "rb") as f:
        assert hashlib.sha256(f.read(64 * MIB)).hexdigest() == want

    # The card now has partitions: a partition is refused, and a mounted card too.
    subprocess.run(["partx", "-a", str(loop_device)], capture_output=True, check=False)
    part2 = Path(f"{loop_device}p2")
    assert part2.exists()
    with pytest.raises(UnsafeTarget, match="is a partition"):
        check_target(part2, force=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "ro", str(part2), str(mnt)], check=True)
    assert (mnt / "etc/hostname").exists()
    with pytest.raises(UnsafeTarget, match=f"in use \\({mnt}\\)"):
        check_target(loop_device, force=False)
    assert_one_line_error(
        edgeflash("write", "--image", pi_image.path, "--device", loop_device, "--yes"), "in use"
    )
    # Even forced, the kernel's O_EXCL keeps a mounted device from being written.
    target = check_target(loop_device, force=True)
    with pytest.raises(UnsafeTarget, match="Device or resource busy"):
        write_image(pi_image.path, target)
    subprocess.run(["umount", str(mnt)], check=True)


def test_image_larger_than_card(pi_image: PiImage, tmp_path: Path) -> None:
    small = tmp_path / "small.bin"
    with open(small, "wb") as f:
        f.truncate(8 * MIB)
    dev = subprocess.run(
        ["losetup", "-f", "--show", str(small)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        proc = edgeflash("write", "--image", pi_image.path, "--device", dev, "--force", "--yes")
        assert_one_line_error(proc, "holds only 8388608")
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)


def test_bad_write_arguments(tmp_path: Path, pi_image: PiImage) -> None:
    assert_one_line_error(
        edgeflash("write", "--image", tmp_path / "nope.img", "--device", tmp_path / "c"),
        "cannot read image",
    )
    assert_one_line_error(
        edgeflash("write", "--image", pi_image.path, "--device", "/dev/nonexistent-card"),
        "no such device",
    )
    assert_one_line_error(
        edgeflash("write", "--image", pi_image.path, "--device", "/dev/null"),
        "neither a block device",
    )
    assert not os.path.exists(tmp_path / "c")
    # A new file anywhere but straight under /dev is a file target (e.g. /dev/shm).
    assert check_target(Path("/dev/shm/edgeflash-test-card.img")).kind == "file"
    assert not Path("/dev/shm/edgeflash-test-card.img").exists()


def test_progress_line() -> None:
    line = format_progress(32 * MIB, 64 * MIB, 2.0)
    assert "50.0%" in line and "16.0 MiB/s" in line and "ETA 0:02" in line
    assert "done" in format_progress(64 * MIB, 64 * MIB, 4.0)
