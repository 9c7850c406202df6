"""Log lines for people or for machines: ``--log-format text`` (the usual
``time level logger: message``) or ``json``, one JSON object per line with
``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, the fields a call
passes with ``extra=`` (``node``, ``device``...) and the process-wide fields set
with ``set_log_fields`` (the agent's node name, say)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord carries; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

_fields: dict[str, Any] = {}  # set_log_fields: added to every JSON line


def set_log_fields(**fields: Any) -> None:
    """Fields every JSON line carries from now on (a record's own ``extra=``
    wins); a value of None removes the field."""
    for key, value in fields.items():
        if value is None:
            _fields.pop(key, None)
        else:
            _fields[key] = value


def _rfc3339(created: float) -> str:
    """2026-12-02T10:15:42.123Z (no datetime import: the agent's path stays lean)."""
    seconds = int(created)
    millis = min(999, int((created - seconds) * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a message or a
    traceback are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extras = {
            k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and k[:1] != "_"
        }
        for key, value in {**_fields, **extras}.items():
            out.setdefault(key, value)  # time, level, logger and message stay as they are
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str | int = "INFO", log_format: str = "text") -> None:
    """Set up the root logger for a command: ``level`` (a name or a number;
    an unknown name is INFO) and ``log_format`` (``text`` or ``json``)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    if isinstance(level, str):
        level = getattr(logging, level.upper(), logging.INFO)
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level, handlers=[handler])


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format``, the same on every command."""
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text (default) or json: one JSON object per line (time, level, logger, message, ids)",
    )
