"""Opening a serial port for trio: pyserial in a worker thread, then the fd set
non-blocking so readers wait on it with ``trio.lowlevel.wait_readable``."""

from __future__ import annotations

import os
from typing import Any

import trio

__all__ = ["open_serial"]


async def open_serial(
    port: str,
    *,
    baud: int,
    data_bits: int,
    parity: str,
    stop_bits: float,
    limiter: trio.CapacityLimiter | None = None,
) -> Any:
    """An open, exclusive, non-blocking ``serial.Serial``; ``OSError`` (pyserial's
    ``SerialException`` is one) when the port cannot be opened."""
    import serial  # pyserial: imported by the mappers that use a serial line only

    def open_port() -> Any:
        return serial.Serial(
            port,
            baudrate=baud,
            bytesize=data_bits,
            parity=parity,
            stopbits=stop_bits,
            timeout=0,
            write_timeout=0,
            exclusive=True,
        )

    opened = await trio.to_thread.run_sync(open_port, limiter=limiter)
    os.set_blocking(opened.fileno(), False)
    return opened
