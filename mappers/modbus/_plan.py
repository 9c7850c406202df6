"""Request batching: contiguous (or overlapping) registers of one device in one read. Sans-io."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mappers.modbus._frame import Register

if TYPE_CHECKING:  # a type only: the planner stays free of the config's file I/O
    from mappers.modbus._config import ModbusProperty

__all__ = ["ReadBatch", "plan_reads"]


@dataclass(frozen=True)
class ReadBatch:
    register: Register
    address: int
    count: int
    properties: tuple[ModbusProperty, ...]

    def slice_for(self, prop: ModbusProperty) -> slice:
        start = prop.address - self.address
        return slice(start, start + prop.count)


def plan_reads(props: Iterable[ModbusProperty], max_gap: int = 0) -> list[ReadBatch]:
    """Group properties into as few reads as the Modbus limits allow.

    Properties of one table whose ranges touch or overlap (or leave at most
    ``max_gap`` unused addresses between them) share a request of at most 125
    registers / 2000 bits.
    """
    by_table: dict[Register, list[ModbusProperty]] = {}
    for p in props:
        by_table.setdefault(p.register, []).append(p)
    batches: list[ReadBatch] = []
    for register in Register:
        ordered = sorted(by_table.get(register, []), key=lambda p: (p.address, p.end))
        current: list[ModbusProperty] = []
        start = end = 0
        for p in ordered:
            if (
                current
                and p.address <= end + max_gap
                and max(end, p.end) - start <= register.max_read
            ):
                current.append(p)
                end = max(end, p.end)
                continue
            if current:
                batches.append(ReadBatch(register, start, end - start, tuple(current)))
            current, start, end = [p], p.address, p.end
        if current:
            batches.append(ReadBatch(register, start, end - start, tuple(current)))
    return batches


def requests_saved(props: Sequence[ModbusProperty]) -> int:
    """How many requests batching saves for one collection of ``props``."""
    return len(props) - len(plan_reads(props))
