"""``edgeflash write``: put an image on a card safely, then prove it is there.

The target is refused when it is (part of) the disk the system runs on, a
partition rather than a whole disk, mounted or in use as swap, or not removable;
all but the first can be overridden with ``force``.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ._errors import BadInput, FlashError, UnsafeTarget, VerifyFailed

__all__ = [
    "BLOCK_SIZE",
    "Target",
    "WriteResult",
    "check_target",
    "format_progress",
    "system_disks",
    "write_image",
]

BLOCK_SIZE = 4 << 20  # 4 MiB: a multiple of every erase block and page size in use
_SECTOR = 512
_SYS = Path("/sys")
_SYSTEM_MOUNTS = ("/", "/boot", "/boot/firmware", "/boot/efi", "/usr", "/var", "/home")

Progress = Callable[[int, int, float], None]


@dataclass(frozen=True, slots=True)
class Target:
    path: Path
    kind: str  # "file" or "block"
    disk: str | None  # kernel name of the whole disk ("sdb", "loop3")
    size: int | None  # bytes, for block devices
    removable: bool


@dataclass(frozen=True, slots=True)
class WriteResult:
    bytes: int
    write_seconds: float  # including the final fsync
    verify_seconds: float
    sha256: str | None  # None when verification was skipped

    @property
    def write_rate(self) -> float:
        return self.bytes / self.write_seconds if self.write_seconds > 0 else 0.0


def _sysfs_disk(major: int, minor: int) -> str | None:
    """Kernel name of the whole disk holding block device major:minor (None if unknown)."""
    link = _SYS / "dev" / "block" / f"{major}:{minor}"
    try:
        real = link.resolve(strict=True)
    except OSError:
        return None
    if (real / "partition").exists():
        real = real.parent
    return real.name


def _underlying(disk: str) -> set[str]:
    """The disk itself plus the disks under device-mapper / md stacks (``slaves``)."""
    out = {disk}
    slaves = _SYS / "block" / disk / "slaves"
    if slaves.is_dir():
        for s in slaves.iterdir():
            dev = (s / "dev").read_text().strip() if (s / "dev").exists() else ""
            if ":" in dev:
                maj, mi = dev.split(":")
                parent = _sysfs_disk(int(maj), int(mi))
                if parent:
                    out |= _underlying(parent)
    return out


def _mounts() -> list[tuple[int, int, str]]:
    """(major, minor, mount point) of every mount, from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            maj, _, mi = fields[2].partition(":")
            mountpoint = fields[4].replace("\\040", " ")
            out.append((int(maj), int(mi), mountpoint))
            # btrfs/overlay report anonymous device numbers; the source names the disk.
            sep = fields.index("-")
            source = fields[sep + 2] if len(fields) > sep + 2 else ""
            if source.startswith("/dev/"):
                try:
                    st = os.stat(source)
                except OSError:
                    continue
                if stat.S_ISBLK(st.st_mode):
                    out.append((os.major(st.st_rdev), os.minor(st.st_rdev), mountpoint))
    return out


def _swaps() -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    try:
        with open("/proc/swaps") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        try:
            st = os.stat(line.split()[0])
        except (OSError, IndexError):
            continue
        if stat.S_ISBLK(st.st_mode):
            out.append((os.major(st.st_rdev), os.minor(st.st_rdev)))
    return out


def system_disks() -> set[str]:
    """Whole disks that hold /, /boot, /usr, /var... or swap."""
    disks: set[str] = set()
    devs = [(maj, mi) for maj, mi, mp in _mounts() if mp in _SYSTEM_MOUNTS] + _swaps()
    for maj, mi in devs:
        disk = _sysfs_disk(maj, mi)
        if disk:
            disks |= _underlying(disk)
    return disks


def _in_use(disk: str) -> list[str]:
    """Mount points (and 'swap') on the disk or any of its partitions."""
    used = []
    for maj, mi, mp in _mounts():
        if maj and _sysfs_disk(maj, mi) == disk:
            used.append(mp)
    for maj, mi in _swaps():
        if _sysfs_disk(maj, mi) == disk:
            used.append("swap")
    holders = _SYS / "block" / disk / "holders"
    if holders.is_dir():
        used += [f"held by {h.name}" for h in holders.iterdir()]
    return sorted(set(used))


def check_target(device: Path, *, force: bool = False) -> Target:
    try:
        st = os.stat(device)
    except FileNotFoundError:
        dev = Path("/dev")
        if device.parent in (dev, dev / "mapper") or dev / "disk" in device.parents:
            raise BadInput(f"{device}: no such device") from None
        if not device.parent.is_dir():
            raise BadInput(f"{device}: directory {device.parent} does not exist") from None
        return Target(device, "file", None, None, False)
    except OSError as exc:
        raise BadInput(f"{device}: {exc}") from exc
    if stat.S_ISREG(st.st_mode):
        return Target(device, "file", None, None, False)
    if not stat.S_ISBLK(st.st_mode):
        raise UnsafeTarget(f"{device} is neither a block device nor a regular file")
    maj, mi = os.major(st.st_rdev), os.minor(st.st_rdev)
    real = (_SYS / "dev" / "block" / f"{maj}:{mi}").resolve()
    disk = _sysfs_disk(maj, mi)
    if disk is None:
        raise UnsafeTarget(f"{device}: unknown to sysfs, refusing to write")
    if (real / "partition").exists():
        raise UnsafeTarget(f"{device} is a partition of /dev/{disk}: write to the whole disk")
    if disk in system_disks():
        raise UnsafeTarget(f"{device} is the disk the running system is on: refusing")
    used = _in_use(disk)
    if used and not force:
        raise UnsafeTarget(f"{device} is in use ({', '.join(used)}): unmount it first (or --force)")
    try:
        removable = (_SYS / "block" / disk / "removable").read_text().strip() == "1"
    except OSError:
        removable = False
    removable = removable or "/usb" in str(real)
    if not removable and not force:
        raise UnsafeTarget(
            f"{device} is not a removable disk (USB or SD reader): refusing without --force"
        )
    try:
        size = int((_SYS / "block" / disk / "size").read_text()) * _SECTOR
    except (OSError, ValueError):
        size = None
    return Target(device, "block", disk, size, removable)


def format_progress(done: int, total: int, elapsed: float, width: int = 30) -> str:
    frac = done / total if total else 1.0
    filled = int(frac * width)
    rate = done / elapsed if elapsed > 0 else 0.0
    if rate > 0 and done < total:
        eta_s = int((total - done) / rate)
        eta = f"ETA {eta_s // 60}:{eta_s % 60:02d}"
    else:
        eta = "ETA -:--" if done < total else "done    "
    mib = 1 << 20
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {frac * 100:5.1f}%  "
        f"{done / mib:8.1f}/{total / mib:.1f} MiB  {rate / mib:7.1f} MiB/s  {eta}"
    )


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _copy(src: int, dst: int, total: int, block: int, progress: Progress | None) -> None:
    buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT and the device like it
    view = memoryview(buf)
    done = 0
    start = time.monotonic()
    last = 0.0
    try:
        while done < total:
            n = os.readv(src, [view])
            if n == 0:
                raise FlashError(f"image ended early at byte {done}")
            _write_all(dst, view[:n])
            done += n
            now = time.monotonic()
            if progress is not None and (now - last >= 0.25 or done == total):
                progress(done, total, now - start)
                last = now
    finally:
        view.release()
        buf.close()


def _hash_fd(path: Path, length: int, block: int, direct: bool) -> str:
    h = hashlib.sha256()
    flags = os.O_RDONLY | os.O_CLOEXEC
    fd = -1
    if direct:
        try:
            fd = os.open(path, flags | os.O_DIRECT)
        except OSError:
            fd = -1
    if fd < 0:
        fd = os.open(path, flags)
        direct = False
    buf = mmap.mmap(-1, block)
    view = memoryview(buf)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        left = length
        while left > 0:
            n = os.readv(fd, [view])
            if n == 0:
                break
            take = min(n, left)
            h.update(view[:take])
            left -= take
        if left:
            raise VerifyFailed(f"{path}: only {length - left} of {length} bytes could be read back")
    finally:
        view.release()
        buf.close()
        os.close(fd)
    return h.hexdigest()


def _drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


_BLKRRPART = 0x125F


def _reread_partitions(fd: int) -> None:
    """Ask the kernel to pick up the new partition table (best effort, like Etcher)."""
    try:
        fcntl.ioctl(fd, _BLKRRPART)
    except OSError:
        pass  # loop devices without partscan, or a partition still in use


def write_image(
    image: Path,
    target: Target,
    *,
    block_size: int = BLOCK_SIZE,
    verify: bool = True,
    progress: Progress | None = None,
) -> WriteResult:
    if block_size <= 0 or block_size % 4096:
        raise BadInput("block size must be a positive multiple of 4096")
    try:
        src = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BadInput(f"cannot read image {image}: {exc}") from exc
    try:
        total = os.fstat(src).st_size
        if target.size is not None and total > target.size:
            raise UnsafeTarget(f"image is {total} bytes but {target.path} holds only {target.size}")
        if target.kind == "block":
            # O_EXCL on a block device fails with EBUSY while anything has it mounted.
            flags = os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        try:
            dst = os.open(target.path, flags, 0o644)
        except OSError as exc:
            raise UnsafeTarget(f"cannot open {target.path} for writing: {exc}") from exc
        try:
            os.posix_fadvise(src, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            start = time.monotonic()
            _copy(src, dst, total, block_size, progress)
            os.fsync(dst)
            write_seconds = time.monotonic() - start
            if target.kind == "block":
                _reread_partitions(dst)
        except OSError as exc:
            raise FlashError(f"writing {target.path} failed: {exc}") from exc
        finally:
            os.close(dst)
    finally:
        os.close(src)
    if not verify:
        return WriteResult(total, write_seconds, 0.0, None)
    start = time.monotonic()
    _drop_cache(target.path)  # read back from the medium, not from the page cache
    with ThreadPoolExecutor(max_workers=2) as pool:
        want = pool.submit(_hash_fd, image, total, block_size, False)
        got = pool.submit(_hash_fd, target.path, total, block_size, target.kind == "block")
        want_hash, got_hash = want.result(), got.result()
    verify_seconds = time.monotonic() - start
    if want_hash != got_hash:
        raise VerifyFailed(
            f"{target.path} reads back sha256 {got_hash[:16]}..., the image is {want_hash[:16]}..."
        )
    return WriteResult(total, write_seconds, verify_seconds, got_hash)
