"""Handing freed heap back to the system, for the small boards' long-running processes."""

from __future__ import annotations

import ctypes
import gc
from typing import Any

__all__ = ["trim_heap"]

_libc: Any = None


def trim_heap() -> None:
    """Collect garbage, then return free heap pages to the system (glibc only).

    Start-up (imports, a resync, the first devices) leaves freed blocks in the C
    heap that glibc keeps; ``malloc_trim`` gives the free pages back.
    """
    global _libc
    gc.collect()
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim  # noqa: B018 - not every libc has it (musl)
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
