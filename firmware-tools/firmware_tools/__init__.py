"""edgeflock firmware tools (``edgeflash``): bake and flash agent-ready images.

``prepare`` writes the agent bundle, its config, the join token and first-boot
units into a Raspberry Pi OS image without mounting it (mtools for the FAT boot
partition, debugfs for the ext4 root); ``write`` puts an image on a card safely
and verifies it; ``inspect`` shows what is in an image; ``bundle`` builds the
offline wheelhouse for the board.
"""

from __future__ import annotations

from ._bundle import Bundle, build_bundle, load_bundle
from ._errors import (
    BadInput,
    FilesystemFull,
    FlashError,
    ImageError,
    ToolFailed,
    UnsafeTarget,
    VerifyFailed,
)
from ._image import Partition, PiLayout, parse_mbr
from ._inspect import inspect_image
from ._prepare import PrepareOptions, PrepareResult, parse_gateway_url, parse_token, prepare_image
from ._write import Target, WriteResult, check_target, write_image

__all__ = [
    "BadInput",
    "Bundle",
    "FilesystemFull",
    "FlashError",
    "ImageError",
    "Partition",
    "PiLayout",
    "PrepareOptions",
    "PrepareResult",
    "Target",
    "ToolFailed",
    "UnsafeTarget",
    "VerifyFailed",
    "WriteResult",
    "build_bundle",
    "check_target",
    "inspect_image",
    "load_bundle",
    "parse_gateway_url",
    "parse_mbr",
    "parse_token",
    "prepare_image",
    "write_image",
]
