"""MBR partition tables and filesystem signatures, sans-io: bytes in, frozen values out."""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

from ._errors import ImageError

__all__ = [
    "MBR_SIZE",
    "SECTOR",
    "Partition",
    "PiLayout",
    "filesystem_kind",
    "find_pi_layout",
    "parse_mbr",
]

SECTOR = 512
MBR_SIZE = 512
_TABLE_OFFSET = 446
_ENTRY = struct.Struct("<B3sB3sII")

FAT_TYPES = frozenset({0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E})
LINUX_TYPE = 0x83
EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
GPT_PROTECTIVE = 0xEE

# Superblock probes: how many bytes from the partition start filesystem_kind needs.
PROBE_SIZE = 2048


@dataclass(frozen=True, slots=True)
class Partition:
    number: int  # 1..4, as Linux names them (mmcblk0p1...)
    bootable: bool
    type_id: int
    start_lba: int
    sectors: int

    @property
    def offset(self) -> int:
        return self.start_lba * SECTOR

    @property
    def size(self) -> int:
        return self.sectors * SECTOR

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True, slots=True)
class PiLayout:
    """The two partitions a Raspberry Pi OS image has: FAT boot and ext4 root."""

    boot: Partition
    root: Partition


def parse_mbr(sector: bytes) -> tuple[Partition, ...]:
    """The used primary entries of a DOS partition table (first 512 bytes of a disk).

    Raises ``ImageError`` for anything that is not a plausible MBR.
    """
    if len(sector) < MBR_SIZE:
        raise ImageError(f"image is {len(sector)} bytes, too short for a partition table")
    if sector[510:512] != b"\x55\xaa":
        raise ImageError("no MBR partition table (boot signature 55aa missing)")
    parts: list[Partition] = []
    for i in range(4):
        raw = sector[_TABLE_OFFSET + 16 * i : _TABLE_OFFSET + 16 * (i + 1)]
        status, _chs1, type_id, _chs2, start, count = _ENTRY.unpack(raw)
        if type_id == 0:
            continue
        if status not in (0x00, 0x80):
            raise ImageError(f"partition {i + 1}: invalid status byte {status:#04x}")
        if type_id == GPT_PROTECTIVE:
            raise ImageError("image uses GPT; Raspberry Pi OS images use an MBR (DOS) table")
        if start == 0 or count == 0:
            raise ImageError(f"partition {i + 1}: empty or starts at sector 0")
        parts.append(Partition(i + 1, status == 0x80, type_id, start, count))
    if not parts:
        raise ImageError("partition table is empty")
    ordered = sorted(parts, key=lambda p: p.start_lba)
    for a, b in itertools.pairwise(ordered):
        if a.start_lba + a.sectors > b.start_lba:
            raise ImageError(f"partitions {a.number} and {b.number} overlap")
    return tuple(parts)


def filesystem_kind(probe: bytes) -> str | None:
    """``"fat"``, ``"ext"`` or None from the first PROBE_SIZE bytes of a partition."""
    if len(probe) >= 1024 + 58 and probe[1024 + 56 : 1024 + 58] == b"\x53\xef":
        return "ext"
    if len(probe) >= 512 and probe[510:512] == b"\x55\xaa":
        if probe[82:87] == b"FAT32" or probe[54:59] in (b"FAT12", b"FAT16"):
            return "fat"
    return None


def find_pi_layout(
    parts: tuple[Partition, ...], image_size: int, probes: dict[int, bytes]
) -> PiLayout:
    """Pick the FAT boot and the ext4 root partition; ``probes`` maps number -> first bytes."""
    for p in parts:
        if p.end > image_size:
            raise ImageError(
                f"partition {p.number} ends at byte {p.end}, past the image end ({image_size}); "
                "truncated download?"
            )
    boot = next((p for p in parts if p.type_id in FAT_TYPES), None)
    if boot is None:
        raise ImageError("no FAT boot partition (type 0x0b/0x0c) in the partition table")
    root = next(
        (p for p in parts if p.type_id == LINUX_TYPE and p.start_lba > boot.start_lba), None
    )
    if root is None:
        raise ImageError("no Linux root partition (type 0x83) after the boot partition")
    if filesystem_kind(probes.get(boot.number, b"")) != "fat":
        raise ImageError(f"partition {boot.number} is typed FAT but holds no FAT filesystem")
    if filesystem_kind(probes.get(root.number, b"")) != "ext":
        raise ImageError(f"partition {root.number} is typed Linux but holds no ext4 filesystem")
    return PiLayout(boot, root)
