"""The mappers' exception root and what can go wrong talking to a device."""

from __future__ import annotations

__all__ = [
    "BusUnavailable",
    "CodecError",
    "ConfigError",
    "CrcError",
    "DeviceRejected",
    "DeviceTimeout",
    "MapperError",
    "ProtocolError",
    "WriteRefused",
]


class MapperError(Exception):
    """Root of every error the mappers raise on purpose."""


class ConfigError(MapperError):
    """A Device/DeviceModel (or the YAML file) does not describe a usable device.

    The message names the device and the key.
    """


class CodecError(MapperError):
    """A value cannot be encoded into (or decoded from) registers or a line."""


class WriteRefused(MapperError):
    """A desired value is not written: read-only property, out of range, unknown."""


class ProtocolError(MapperError):
    """The peer sent bytes that are not a valid answer to our request."""


class CrcError(ProtocolError):
    """An RTU frame arrived with a wrong CRC."""


class DeviceTimeout(MapperError):
    """No (complete) answer within the timeout."""


class BusUnavailable(MapperError):
    """The bus (TCP connection, serial port) cannot be opened or was lost."""


EXCEPTION_NAMES = {
    1: "ILLEGAL_FUNCTION",
    2: "ILLEGAL_DATA_ADDRESS",
    3: "ILLEGAL_DATA_VALUE",
    4: "SLAVE_DEVICE_FAILURE",
    5: "ACKNOWLEDGE",
    6: "SLAVE_DEVICE_BUSY",
    8: "MEMORY_PARITY_ERROR",
    10: "GATEWAY_PATH_UNAVAILABLE",
    11: "GATEWAY_TARGET_FAILED_TO_RESPOND",
}


class DeviceRejected(MapperError):
    """The device answered with a Modbus exception response."""

    def __init__(self, function_code: int, exception_code: int) -> None:
        self.function_code = function_code
        self.exception_code = exception_code
        name = EXCEPTION_NAMES.get(exception_code, "UNKNOWN")
        super().__init__(f"exception {exception_code} {name} (function {function_code})")
