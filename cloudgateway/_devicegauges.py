"""Device properties as metrics: every numeric reported twin value is a
sample of the gauge ``edgeflock_device_property{namespace,device,property,node}``.

A store watch keeps one rendered block of exposition lines per Device, redone
when that Device changes, so a scrape joins blocks instead of walking objects:
at 5,000 devices by 20 properties it is a join of 5,000 byte strings
(bench/metrics_scrape.py). prometheus_client would spend ~0.8 s formatting
100,000 samples at every scrape, with the event loop stopped, so this one
family is written here, by the text format's rules (label values escaped,
values as Go's ParseFloat reads them). A value that is not a finite decimal
number ("on", "", "nan", "1e999") has no sample, and is no error."""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import trio

from ._store import Event, Store, SubscriptionLost

log = logging.getLogger(__name__)

NAME = "edgeflock_device_property"
HEAD = (
    f"# HELP {NAME} A device property's latest reported value "
    "(numeric twin values only)\n"
    f"# TYPE {NAME} gauge\n"
).encode()
_PREFIX = "devices/"
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def numeric(value: Any) -> float | None:
    """A twin value (a string) as a finite number, else None."""
    if not isinstance(value, str) or not _NUMBER.fullmatch(value.strip()):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def device_lines(obj: Any) -> bytes:
    """The samples of one Device object (b"" if it has none)."""
    if not isinstance(obj, dict):
        return b""
    meta, spec, status = (obj.get(k) for k in ("metadata", "spec", "status"))
    if not isinstance(meta, dict) or not isinstance(status, dict):
        return b""
    twins = status.get("twins")
    if not isinstance(twins, list):
        return b""
    values: dict[str, float] = {}  # a property named twice: the last one
    for twin in twins:
        if not isinstance(twin, dict) or not isinstance(twin.get("propertyName"), str):
            continue
        reported = twin.get("reported")
        number = numeric(reported.get("value")) if isinstance(reported, dict) else None
        if number is not None:
            values[twin["propertyName"]] = number
    if not values:
        return b""
    node = spec.get("nodeName") if isinstance(spec, dict) else None
    prefix = (
        f'{NAME}{{namespace="{_label(str(meta.get("namespace") or ""))}",'
        f'device="{_label(str(meta.get("name") or ""))}",property="'
    )
    suffix = f'",node="{_label(node if isinstance(node, str) else "")}"}} '
    return "".join(
        f"{prefix}{_label(prop)}{suffix}{number!r}\n" for prop, number in values.items()
    ).encode()


class DeviceGauges:
    """Follows the store's Devices; ``render()`` is the family's text."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._blocks: dict[str, bytes] = {}  # device key → its lines

    def render(self) -> bytes:
        if not self._blocks:
            return b""
        return HEAD + b"".join(self._blocks.values())

    def __len__(self) -> int:
        """Devices with at least one sample."""
        return len(self._blocks)

    def _apply(self, ev: Event) -> None:
        lines = b"" if ev.type == "DELETED" else device_lines(ev.record.value)
        if lines:
            self._blocks[ev.key] = lines
        else:
            self._blocks.pop(ev.key, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """List the Devices, then follow their changes until cancelled; a
        watch that fell behind lists again."""
        started = False
        while True:
            with self._store.subscribe() as sub:
                records, rev = await self._store.list(_PREFIX)
                blocks = {}
                for r in records:
                    lines = device_lines(r.value)
                    if lines:
                        blocks[r.key] = lines
                self._blocks = blocks
                del records
                if not started:
                    started = True
                    task_status.started()
                try:
                    async for ev in sub:
                        if ev.rev > rev and ev.key.startswith(_PREFIX):
                            self._apply(ev)
                except SubscriptionLost:
                    log.warning("device metrics fell behind the store; listing the devices again")
