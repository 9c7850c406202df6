"""The Modbus mapper: TCP, RTU over serial and RTU over TCP devices → DeviceTwin.

``modbus-mapper --mqtt tcp://127.0.0.1:1883 --node NAME`` follows the node's
devices through the agent; ``--config devices.yaml`` runs standalone. See
``mappers/README.md`` for the Device configuration keys.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import trio

from mappers._manifest import DeviceDoc
from mappers._runner import DeviceFactory, cli_main
from mappers.modbus._bus import Bus, BusPool, SerialBus, TcpBus
from mappers.modbus._codec import DataType, RegisterCodec
from mappers.modbus._config import ModbusDevice, parse_device
from mappers.modbus._device import ModbusDeviceTask, Publisher

__all__ = [
    "PROTOCOL",
    "Bus",
    "BusPool",
    "DataType",
    "ModbusDevice",
    "ModbusDeviceTask",
    "RegisterCodec",
    "SerialBus",
    "TcpBus",
    "main",
    "make_factory",
    "parse_device",
]

PROTOCOL = "modbus"


class _PooledTask(ModbusDeviceTask):
    """A device task that gives its bus back to the pool when it ends."""

    def __init__(self, device: ModbusDevice, pool: BusPool, publisher: Publisher) -> None:
        super().__init__(device, pool.acquire(device.endpoint), publisher)
        self._pool = pool

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await super().run(task_status=task_status)
        finally:
            with trio.CancelScope(shield=True):
                await self._pool.release(self.bus)


def make_factory(publisher: Publisher, pool: BusPool | None = None) -> DeviceFactory:
    """Device docs → device tasks sharing one bus per physical bus."""
    buses = pool if pool is not None else BusPool()

    def factory(doc: DeviceDoc) -> ModbusDeviceTask:
        return _PooledTask(parse_device(doc), buses, publisher)

    return factory


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(PROTOCOL, make_factory, argv)


if __name__ == "__main__":
    sys.exit(main())
