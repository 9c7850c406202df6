"""``modbus-mapper``: device docs → Modbus device tasks sharing one bus per physical bus."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from mappers._manifest import DeviceDoc
from mappers._runner import DeviceFactory, cli_main
from mappers.modbus._bus import BusPool
from mappers.modbus._config import ModbusDevice, parse_device
from mappers.modbus._device import ModbusDeviceTask, Publisher

__all__ = ["PROTOCOL", "main", "make_factory"]

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
