"""One exception root for the firmware tools; subclasses say what happened."""

from __future__ import annotations

__all__ = [
    "BadInput",
    "FilesystemFull",
    "FlashError",
    "ImageError",
    "ToolFailed",
    "UnsafeTarget",
    "VerifyFailed",
]


class FlashError(Exception):
    """Root of every error ``edgeflash`` reports (one line, non-zero exit)."""


class BadInput(FlashError):
    """A command-line value (token, URL, hostname, key file...) is malformed."""


class ImageError(FlashError):
    """The image has no usable partition table or lacks the expected partitions."""


class FilesystemFull(FlashError):
    """A partition of the output image has no room for what must go into it."""


class ToolFailed(FlashError):
    """An external tool (mtools, debugfs, pip) failed; the message carries its stderr."""


class UnsafeTarget(FlashError):
    """``write`` refuses the target device (system disk, mounted, not removable)."""


class VerifyFailed(FlashError):
    """What was read back from the target differs from the image."""
