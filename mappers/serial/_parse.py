"""Line-oriented sensor protocol: bytes → lines → named, typed, scaled values. Sans-io."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mappers._errors import CodecError

__all__ = ["FieldSpec", "LineParser", "LineSplitter"]

Value = int | float | bool | str


class LineSplitter:
    """Bytes in, complete lines out. A line longer than ``max_line`` is dropped whole
    (counted in ``overflows``) rather than growing the buffer."""

    def __init__(self, ending: bytes = b"\n", max_line: int = 512) -> None:
        self.ending = ending
        self.max_line = max_line
        self._buf = bytearray()
        self._discarding = False
        self.overflows = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines: list[bytes] = []
        while True:
            idx = self._buf.find(self.ending)
            if idx < 0:
                break
            line = bytes(self._buf[:idx])
            del self._buf[: idx + len(self.ending)]
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > self.max_line:
                self.overflows += 1
                continue
            lines.append(line.rstrip(b"\r"))
        if len(self._buf) > self.max_line:
            if not self._discarding:
                self.overflows += 1
            self._discarding = True
            self._buf.clear()
        return lines

    def reset(self) -> None:
        """Forget a partial line (the port went away mid-line)."""
        self._buf.clear()
        self._discarding = False


_TRUE = {"1", "true", "on", "yes", "ok"}
_FALSE = {"0", "false", "off", "no"}


def _show(text: str) -> str:
    """A field for an error message: quoted, and cut short."""
    return repr(text) if len(text) <= 40 else f"{text[:37]!r}... ({len(text)} characters)"


@dataclass(frozen=True)
class FieldSpec:
    name: str
    index: int | None = None  # delimited lines: 0-based field
    group: str | None = None  # regex lines: named group
    data_type: str = "float"  # int | float | bool | string
    scale: float = 1.0
    value_offset: float = 0.0

    def __post_init__(self) -> None:
        for attr, key in (("scale", "scale"), ("value_offset", "valueOffset")):
            try:
                number = float(getattr(self, attr))
            except (OverflowError, TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                raise CodecError(f"{self.name}: {key} must be a finite number")
            object.__setattr__(self, attr, number)

    def convert(self, text: str) -> Value:
        text = text.strip()
        if self.data_type == "string":
            return text
        if self.data_type == "bool":
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise CodecError(f"{self.name}: {_show(text)} is not a boolean")
        try:
            raw = float(text) if self.data_type == "float" else int(text, 0)
        except ValueError:
            raise CodecError(f"{self.name}: {_show(text)} is not {self.data_type}") from None
        if isinstance(raw, float) and not math.isfinite(raw):
            raise CodecError(f"{self.name}: {_show(text)} is not finite")
        if self.scale == 1.0 and self.value_offset == 0.0:
            return raw
        try:
            value = raw * self.scale + self.value_offset
        except OverflowError:  # an int past the float range
            value = math.inf
        if not math.isfinite(value):
            raise CodecError(f"{self.name}: {_show(text)} is out of range once scaled")
        return float(f"{value:.12g}")


class LineParser:
    """One line → {property: value}. Raises CodecError for a line that does not fit."""

    def __init__(
        self,
        fields: Sequence[FieldSpec],
        *,
        delimiter: str | None = ",",
        regex: str | None = None,
        encoding: str = "utf-8",
    ) -> None:
        if (delimiter is None) == (regex is None):
            raise ValueError("exactly one of delimiter or regex")
        self.fields = tuple(fields)
        self.delimiter = delimiter
        self.pattern = re.compile(regex) if regex is not None else None
        self.encoding = encoding
        if self.pattern is not None:
            groups = set(self.pattern.groupindex)
            for f in self.fields:
                if (f.group or f.name) not in groups:
                    raise ValueError(f"{f.name}: regex has no group {(f.group or f.name)!r}")
        self._need = 1 + max((f.index or 0 for f in self.fields), default=0)

    def parse(self, line: bytes) -> Mapping[str, Value]:
        try:
            text = line.decode(self.encoding)
        except UnicodeDecodeError:
            raise CodecError(f"not {self.encoding} text: {line[:40]!r}") from None
        if not text.isprintable():
            raise CodecError(f"control characters in line: {line[:40]!r}")
        if self.pattern is not None:
            m = self.pattern.search(text)
            if m is None:
                raise CodecError(f"line does not match the regex: {text[:60]!r}")
            return {f.name: f.convert(m.group(f.group or f.name) or "") for f in self.fields}
        assert self.delimiter is not None
        parts = text.split(self.delimiter)
        if len(parts) < self._need:
            raise CodecError(f"{len(parts)} fields, need {self._need}: {text[:60]!r}")
        return {f.name: f.convert(parts[f.index or 0]) for f in self.fields}
