"""Logging unexpected failures without letting a peer flood the log."""

from __future__ import annotations

import logging

__all__ = ["FailureLog"]


class FailureLog:
    """Logs an unexpected exception with its traceback the first time a kind of
    failure (its type and the line that raised it) is seen, and as one line
    after that: a peer that triggers the same failure again and again must not
    flood the log. At most ``limit`` kinds are remembered."""

    def __init__(self, logger: logging.Logger, *, limit: int = 100) -> None:
        self._log = logger
        self._seen: set[tuple[str, str, int]] = set()
        self._limit = limit

    def failed(self, what: str, exc: BaseException) -> None:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        file, line = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb else ("", 0)
        kind = (type(exc).__name__, file, line)
        if kind not in self._seen and len(self._seen) < self._limit:
            self._seen.add(kind)
            self._log.error("%s", what, exc_info=exc)
        else:
            self._log.warning("%s: %r", what, exc)
