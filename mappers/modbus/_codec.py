"""Register codec: Modbus registers/bits ⇄ typed, scaled values. Sans-io.

A property's registers are 16-bit words on the wire, each big-endian ("AB") and
the first word most significant ("ABCD") unless told otherwise:

- ``byte_swap`` (KubeEdge ``isSwap``, ``byteOrder: little``) swaps the two bytes
  of every word ("BA").
- ``word_swap`` (KubeEdge ``isRegisterSwap``, ``wordOrder: little``) reverses the
  order of the words ("CDAB" for a 32-bit value).

The engineering value is ``raw * scale + value_offset``; writing inverts that.
Two finishing rules reproduce KubeEdge's Modbus mappers for manifests written
for them: ``truncate`` (an integer property's scaled value cut toward zero, as
Go's ``int64(float64(raw) * scale)``) and ``decimals`` (a float property read
from one register rounded half up to that many decimals, as the kubeedge/examples
temperature mapper does).
"""

from __future__ import annotations

import codecs
import enum
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from mappers._errors import CodecError

__all__ = ["DataType", "RegisterCodec", "Value", "format_value", "parse_value"]

Value = int | float | bool | str


class DataType(enum.Enum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BOOL = "bool"
    STRING = "string"

    @classmethod
    def parse(cls, text: str) -> DataType:
        key = text.strip().lower()
        key = {"boolean": "bool", "float": "float32", "double": "float64"}.get(key, key)
        try:
            return cls(key)
        except ValueError:
            names = ", ".join(t.value for t in cls)
            raise CodecError(f"unknown dataType {text!r} (one of {names})") from None


# struct format (big-endian) and register count of the fixed-size types
_FORMATS: dict[DataType, tuple[str, int]] = {
    DataType.INT16: (">h", 1),
    DataType.UINT16: (">H", 1),
    DataType.INT32: (">i", 2),
    DataType.UINT32: (">I", 2),
    DataType.INT64: (">q", 4),
    DataType.UINT64: (">Q", 4),
    DataType.FLOAT32: (">f", 2),
    DataType.FLOAT64: (">d", 4),
}


def registers_for(data_type: DataType) -> int:
    """Registers a fixed-size type occupies (1 for bool, 0 = any for string)."""
    if data_type is DataType.BOOL:
        return 1
    if data_type is DataType.STRING:
        return 0
    return _FORMATS[data_type][1]


def _shortest_float32(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (21.3, not 21.2999992)."""
    if not math.isfinite(value):
        return value
    packed = struct.pack(">f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        try:
            if struct.pack(">f", candidate) == packed:
                return candidate
        except OverflowError:  # rounded past the float32 range
            continue
    return value


def describe(value: object) -> str:
    """``value`` for an error message: short, and safe for ints too long for ``str()``."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _finite(value: float, what: str) -> float:
    """``value`` as a finite float, else CodecError."""
    try:
        number = float(value)
    except (OverflowError, TypeError, ValueError):
        raise CodecError(f"{what} must be a finite number, not {describe(value)}") from None
    if not math.isfinite(number):
        raise CodecError(f"{what} must be a finite number, not {describe(value)}")
    return number


def _tidy(value: float) -> float:
    """Remove binary noise after scaling (456 * 0.1 → 45.6)."""
    if not math.isfinite(value) or value == 0:
        return value
    return float(f"{value:.12g}")


@dataclass(frozen=True)
class RegisterCodec:
    """How one property's registers (or bits) map to a value."""

    data_type: DataType
    count: int = 0  # registers; 0 = the type's natural size
    byte_swap: bool = False
    word_swap: bool = False
    scale: float = 1.0
    value_offset: float = 0.0
    encoding: str = "utf-8"
    truncate: bool = False  # a scaled value cut toward zero to an integer
    decimals: int | None = None  # a scaled value rounded half up to this many decimals

    def __post_init__(self) -> None:
        natural = registers_for(self.data_type)
        if self.count < 0:
            raise CodecError(f"limit must be >= 0, not {self.count}")
        if self.count == 0:
            if self.data_type is DataType.STRING:
                raise CodecError("a string needs limit (registers) > 0")
            object.__setattr__(self, "count", natural)
        elif natural and self.count < natural:
            raise CodecError(
                f"{self.data_type.value} needs {natural} registers, limit is {self.count}"
            )
        scale = _finite(self.scale, "scale")
        if scale == 0:
            raise CodecError("scale must be a finite non-zero number, not 0")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "value_offset", _finite(self.value_offset, "valueOffset"))
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise CodecError(f"unknown string encoding {self.encoding!r}") from None

    @property
    def scaled(self) -> bool:
        return self.scale != 1.0 or self.value_offset != 0.0

    # -- bytes <-> registers with the configured orders ---------------------------

    def _to_bytes(self, registers: Sequence[int]) -> bytes:
        words = list(registers)
        if self.word_swap:
            words.reverse()
        out = bytearray()
        for w in words:
            if not 0 <= w <= 0xFFFF:
                raise CodecError(f"register value {describe(w)} out of 0..65535")
            hi, lo = w >> 8, w & 0xFF
            out += bytes((lo, hi)) if self.byte_swap else bytes((hi, lo))
        return bytes(out)

    def _from_bytes(self, data: bytes) -> list[int]:
        words = []
        for i in range(0, len(data), 2):
            a, b = data[i], data[i + 1]
            words.append((b << 8 | a) if self.byte_swap else (a << 8 | b))
        if self.word_swap:
            words.reverse()
        return words

    # -- decode -----------------------------------------------------------------

    def decode(self, registers: Sequence[int]) -> Value:
        """Registers (exactly ``count`` of them) → value."""
        if len(registers) != self.count:
            raise CodecError(f"expected {self.count} registers, got {len(registers)}")
        dt = self.data_type
        if dt is DataType.BOOL:
            return any(registers)
        data = self._to_bytes(registers)
        if dt is DataType.STRING:
            try:
                return data.rstrip(b"\x00 ").decode(self.encoding)
            except UnicodeDecodeError as exc:
                raise CodecError(f"string registers are not {self.encoding}: {exc}") from None
        fmt, n = _FORMATS[dt]
        # extra registers beyond the type's size (limit > natural): the value is in
        # the last n words after ordering, so a 16-bit value with limit 2 still works
        raw: int | float = struct.unpack(fmt, data[-2 * n :])[0]
        if dt is DataType.FLOAT32:
            raw = _shortest_float32(float(raw))
        if not self.scaled:
            return raw
        return self._finish(raw * self.scale + self.value_offset)

    def _finish(self, value: float) -> Value:
        """A scaled value with the configured finishing rule applied."""
        if not math.isfinite(value):
            return value
        if self.truncate:
            return math.trunc(value)
        if self.decimals is not None:
            return _tidy(math.floor(value * 10**self.decimals + 0.5) / 10**self.decimals)
        return _tidy(value)

    def decode_bits(self, bits: Sequence[bool]) -> Value:
        """Coil / discrete input bits → value (bool for one bit, else an int)."""
        if len(bits) != self.count:
            raise CodecError(f"expected {self.count} bits, got {len(bits)}")
        if self.data_type is DataType.BOOL:
            return bool(bits[0]) if self.count == 1 else any(bits)
        raw = sum(1 << i for i, b in enumerate(bits) if b)
        return self._finish(raw * self.scale + self.value_offset) if self.scaled else raw

    # -- encode -----------------------------------------------------------------

    def encode(self, value: Value) -> list[int]:
        """Value → registers (``count`` of them); raises CodecError when it does not fit."""
        dt = self.data_type
        if dt is DataType.BOOL:
            return [0] * (self.count - 1) + [1 if _as_bool(value) else 0]
        if dt is DataType.STRING:
            return self._encode_string(value)
        fmt, n = _FORMATS[dt]
        number = _as_number(value)
        try:
            if dt in (DataType.FLOAT32, DataType.FLOAT64):
                packed = struct.pack(fmt, self._unscale_float(value, number))
            else:
                packed = struct.pack(fmt, self._unscale_int(value, number))
        except (OverflowError, struct.error):
            raise CodecError(f"{describe(value)} does not fit {dt.value}") from None
        pad = b"\x00" * (2 * (self.count - n))
        return self._from_bytes(pad + packed)

    def _encode_string(self, value: Value) -> list[int]:
        try:
            data = (value if isinstance(value, str) else str(value)).encode(self.encoding)
        except ValueError:  # an int too long for str(), or text the encoding lacks
            raise CodecError(f"{describe(value)} is not {self.encoding} text") from None
        if len(data) > 2 * self.count:
            raise CodecError(f"string of {len(data)} bytes exceeds {self.count} registers")
        return self._from_bytes(data.ljust(2 * self.count, b"\x00"))

    def _unscale_float(self, value: Value, number: int | float) -> float:
        """The raw float for a float register; inf and nan pass, overflow does not."""
        try:
            raw = float(number)
            if self.scaled:
                raw = (raw - self.value_offset) / self.scale
        except OverflowError:
            raise CodecError(f"{describe(value)} does not fit {self.data_type.value}") from None
        if math.isfinite(number) and not math.isfinite(raw):
            raise CodecError(f"{describe(value)} does not fit {self.data_type.value} once scaled")
        return raw

    def _unscale_int(self, value: Value, number: int | float) -> int:
        """The raw integer for an integer register (rounded after scaling)."""
        if isinstance(number, float) and not math.isfinite(number):
            raise CodecError(f"{describe(value)} is not a finite number")
        if not self.scaled:
            return round(number)
        try:
            raw = (number - self.value_offset) / self.scale
        except OverflowError:
            raise CodecError(f"{describe(value)} does not fit {self.data_type.value}") from None
        if not math.isfinite(raw):
            raise CodecError(f"{describe(value)} does not fit {self.data_type.value} once scaled")
        return round(raw)

    def encode_bits(self, value: Value) -> list[bool]:
        if self.data_type is DataType.BOOL:
            return [_as_bool(value)] * self.count
        number = _as_number(value)
        if isinstance(number, float) and not math.isfinite(number):
            raise CodecError(f"{describe(value)} is not a finite number")
        whole = int(number)
        if not 0 <= whole < (1 << self.count):
            raise CodecError(f"{describe(value)} does not fit {self.count} bits")
        return [bool(whole >> i & 1) for i in range(self.count)]


def _as_bool(value: Value) -> bool:
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1", "on", "yes"):
            return True
        if low in ("false", "0", "off", "no"):
            return False
        raise CodecError(f"{describe(value)} is not a boolean")
    return bool(value)


def _as_number(value: Value) -> int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise CodecError(f"{describe(value)} is not a number") from None


def parse_value(text: str, data_type: DataType) -> Value:
    """A twin value string → a value for ``data_type`` (for writes)."""
    if data_type is DataType.BOOL:
        return _as_bool(text)
    if data_type is DataType.STRING:
        return text
    return _as_number(text)


def format_value(value: Value, twin_type: str = "") -> str:
    """A value → the twin's string form, shaped by the model's type when known."""
    twin_type = twin_type.lower()
    if isinstance(value, bool):
        return "true" if value else "false"
    if twin_type == "boolean":
        return "true" if value not in (0, "", "0", "false") else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # past Python's 4,300-digit limit for str(int)
            raise CodecError(f"{describe(value)} has too many digits") from None
    if twin_type == "int":
        return str(round(value)) if math.isfinite(value) else str(value)
    if isinstance(value, float):
        if value.is_integer() and twin_type not in ("float", "double"):
            return str(int(value))
        return repr(value)
    return str(value)
