"""Pi-like disk images built with the real tools (sfdisk, mkfs.fat, mke2fs), and the CLI."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

MIB = 1 << 20
SECTOR = 512
BOOT_START = 8192  # sectors: 4 MiB, as Raspberry Pi OS aligns
BOOT_SECTORS = 81920  # 40 MiB: enough clusters for FAT32 (mtools insists on >= 65525)
ROOT_START = BOOT_START + BOOT_SECTORS


@dataclass(frozen=True)
class PiImage:
    path: Path
    boot_offset: int
    root_offset: int
    root_size: int


def make_pi_image(
    path: Path, *, total_mib: int = 64, filler: int = 0, parts: str | None = None
) -> PiImage:
    """A Raspberry Pi OS-shaped image: MBR, FAT32 'bootfs' (type c) + ext4 'rootfs' (83).

    ``filler`` bytes of random data go into the root filesystem to make it (nearly) full.
    """
    total = total_mib * MIB
    with open(path, "wb") as f:
        f.truncate(total)
    table = parts or (
        f"label: dos\nstart={BOOT_START}, size={BOOT_SECTORS}, type=c\nstart={ROOT_START}, type=83\n"
    )
    subprocess.run(["sfdisk", "-q", str(path)], input=table.encode(), check=True)
    if parts is not None:
        return PiImage(path, BOOT_START * SECTOR, ROOT_START * SECTOR, 0)
    subprocess.run(
        [
            "mkfs.fat",
            "-F",
            "32",
            "-s",
            "1",
            "-h",
            str(BOOT_START),
            "-n",
            "bootfs",
            "--offset",
            str(BOOT_START),
            str(path),
            str(BOOT_SECTORS // 2),
        ],
        check=True,
        capture_output=True,
    )
    boot = f"{path}@@{BOOT_START * SECTOR}"
    for name, text in (
        (
            "cmdline.txt",
            "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n",
        ),
        ("config.txt", "[all]\narm_64bit=1\ndtparam=audio=on\n"),
    ):
        src = path.parent / f".{name}"
        src.write_text(text)
        subprocess.run(["mcopy", "-i", boot, str(src), f"::/{name}"], check=True)
        src.unlink()
    tree = path.parent / f".{path.name}.rootfs"
    for d in (
        "etc/systemd/system/multi-user.target.wants",
        "usr/bin",
        "usr/lib",
        "var/lib",
        "boot/firmware",
        "home",
        "opt",
        "root",
        "tmp",
    ):
        (tree / d).mkdir(parents=True, exist_ok=True)
    (tree / "etc/hostname").write_text("raspberrypi\n")
    (tree / "etc/os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_CODENAME=bookworm\n'
    )
    if filler:
        (tree / "filler.bin").write_bytes(hashlib.shake_256(b"fill").digest(filler))
    root_size = total - ROOT_START * SECTOR
    subprocess.run(
        [
            "mke2fs",
            "-q",
            "-t",
            "ext4",
            "-L",
            "rootfs",
            "-b",
            "1024",
            "-m",
            "0",
            "-E",
            f"offset={ROOT_START * SECTOR}",
            "-d",
            str(tree),
            str(path),
            f"{root_size // 1024}k",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(["rm", "-rf", str(tree)], check=True)
    return PiImage(path, BOOT_START * SECTOR, ROOT_START * SECTOR, root_size)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def edgeflash(*args: str | Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "firmware_tools", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"edgeflash {args} failed: {proc.stderr}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgeflash: error: "), lines
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def pi_image(tmp_path: Path) -> PiImage:
    return make_pi_image(tmp_path / "raspios.img")


TOKEN = "abcdef.0123456789abcdef." + "ab12" * 16


@pytest.fixture(scope="session")
def project_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``edgeflash bundle --no-deps``: the project's own wheel, built once per session."""
    out = tmp_path_factory.mktemp("bundle") / "b"
    edgeflash(
        "bundle", "--arch", "aarch64", "--python", "3.11", "--no-deps", "--output", out, check=True
    )
    return out
