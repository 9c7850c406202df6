"""The MBR parser and layout finder: sans-io, fed real images and random bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from firmware_tools import ImageError, parse_mbr
from firmware_tools._disk import read_layout
from firmware_tools._image import filesystem_kind, find_pi_layout
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import BOOT_SECTORS, BOOT_START, MIB, ROOT_START, PiImage, make_pi_image


def mbr(*entries: tuple[int, int, int, int], sig: bytes = b"\x55\xaa") -> bytes:
    table = b"".join(
        struct.pack("<B3sB3sII", s, b"\0" * 3, t, b"\0" * 3, a, n) for s, t, a, n in entries
    )
    table += b"\0" * (64 - len(table))
    return b"\0" * 446 + table + sig


def test_parses_the_real_image(pi_image: PiImage) -> None:
    parts, layout = read_layout(str(pi_image.path))
    assert [(p.number, p.type_id, p.start_lba, p.sectors) for p in parts] == [
        (1, 0x0C, BOOT_START, BOOT_SECTORS),
        (2, 0x83, ROOT_START, 64 * MIB // 512 - ROOT_START),
    ]
    assert layout.boot.offset == pi_image.boot_offset
    assert layout.root.offset == pi_image.root_offset
    assert layout.root.end == 64 * MIB
    with open(pi_image.path, "rb") as f:
        f.seek(pi_image.boot_offset)
        assert filesystem_kind(f.read(2048)) == "fat"
        f.seek(pi_image.root_offset)
        assert filesystem_kind(f.read(2048)) == "ext"


@pytest.mark.parametrize(
    ("sector", "message"),
    [
        (b"\0" * 100, "too short"),
        (b"\0" * 512, "boot signature"),
        (mbr(), "empty"),
        (mbr((0x00, 0xEE, 1, 1000)), "GPT"),
        (mbr((0x42, 0x0C, 8192, 100)), "status byte"),
        (mbr((0x00, 0x0C, 0, 100)), "sector 0"),
        (mbr((0x00, 0x0C, 8192, 100), (0x00, 0x83, 8200, 100)), "overlap"),
    ],
)
def test_rejects_bad_tables(sector: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        parse_mbr(sector)


def test_layout_needs_boot_and_root_with_real_filesystems() -> None:
    fat = b"\0" * 82 + b"FAT32" + b"\0" * (510 - 87) + b"\x55\xaa"
    ext = b"\0" * (1024 + 56) + b"\x53\xef" + b"\0" * 100
    both = parse_mbr(mbr((0x80, 0x0C, 8, 8), (0, 0x83, 16, 8)))
    layout = find_pi_layout(both, 24 * 512, {1: fat, 2: ext})
    assert (layout.boot.number, layout.root.number, layout.boot.bootable) == (1, 2, True)
    with pytest.raises(ImageError, match="no FAT boot partition"):
        find_pi_layout(parse_mbr(mbr((0, 0x83, 16, 8))), 24 * 512, {1: ext})
    with pytest.raises(ImageError, match="no Linux root"):
        find_pi_layout(parse_mbr(mbr((0, 0x0C, 16, 8))), 24 * 512, {1: fat})
    with pytest.raises(ImageError, match="holds no ext4"):
        find_pi_layout(both, 24 * 512, {1: fat, 2: fat})
    with pytest.raises(ImageError, match="holds no FAT"):
        find_pi_layout(both, 24 * 512, {1: ext, 2: ext})
    with pytest.raises(ImageError, match="truncated"):
        find_pi_layout(both, 20 * 512, {1: fat, 2: ext})


def test_unformatted_partitions_are_rejected(tmp_path: Path) -> None:
    img = make_pi_image(
        tmp_path / "raw.img",
        parts=f"label: dos\nstart={BOOT_START}, size={BOOT_SECTORS}, type=c\nstart={ROOT_START}, type=83\n",
    )
    with pytest.raises(ImageError, match="holds no FAT filesystem"):
        read_layout(str(img.path))


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_random_bytes_raise_only_image_error(data: bytes) -> None:
    try:
        parts = parse_mbr(data)
    except ImageError:
        return
    assert 1 <= len(parts) <= 4


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0x00, 0x80, 0x01, 0x7F]),
            st.integers(0, 255),
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
        ),
        min_size=0,
        max_size=4,
    ),
    st.integers(0, 2**40),
    st.binary(max_size=2048),
)
def test_random_tables_raise_only_image_error(
    entries: list[tuple[int, int, int, int]], size: int, probe: bytes
) -> None:
    """Structured random tables reach past the signature check, into the layout finder."""
    try:
        parts = parse_mbr(mbr(*entries))
        layout = find_pi_layout(parts, size, {p.number: probe for p in parts})
    except ImageError:
        return
    assert layout.boot.end <= size and layout.root.end <= size
    assert layout.root.start_lba > layout.boot.start_lba


def test_the_parser_does_no_io() -> None:
    import ast

    import firmware_tools._image as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {
        (n.module or "") if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert imported <= {"__future__", "struct", "itertools", "dataclasses", "_errors"}
    calls = {
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    assert "open" not in calls
