"""Reading an image file's partition table and filesystem probes (the I/O around
the sans-io parser in ``_image``)."""

from __future__ import annotations

from ._errors import ImageError
from ._image import MBR_SIZE, PROBE_SIZE, Partition, PiLayout, find_pi_layout, parse_mbr

__all__ = ["read_layout"]


def read_layout(path: str) -> tuple[tuple[Partition, ...], PiLayout]:
    """The partitions of an image file and its boot/root pair."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc}") from exc
    with f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(0)
        parts = parse_mbr(f.read(MBR_SIZE))
        probes: dict[int, bytes] = {}
        for p in parts:
            if p.end <= size:
                f.seek(p.offset)
                probes[p.number] = f.read(PROBE_SIZE)
    return parts, find_pi_layout(parts, size, probes)
