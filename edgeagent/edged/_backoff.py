"""Crash-loop back-off, sans-io: like kubelet, 10 s doubling to 300 s per container,
reset when a container ran long enough. Times are plain floats (seconds)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class _Entry:
    delay: float
    last: float


@dataclass
class Backoff:
    base: float = 10.0
    cap: float = 300.0
    reset_after: float = 600.0  # a run (or quiet period) this long forgets the back-off
    _entries: dict[str, _Entry] = field(default_factory=dict)

    def delay(self, key: str) -> float:
        """The delay that applies to the next restart of ``key`` (0 when none)."""
        e = self._entries.get(key)
        return e.delay if e else 0.0

    def ready_at(self, key: str, finished: float) -> float:
        """When ``key``, which exited at ``finished``, may be restarted."""
        e = self._entries.get(key)
        if e is None:
            return finished
        return finished + e.delay

    def restarted(self, key: str, now: float, ran: float) -> None:
        """Record a restart of ``key`` after a run of ``ran`` seconds."""
        e = self._entries.get(key)
        if e is None or ran >= self.reset_after or now - e.last >= 2 * self.reset_after:
            self._entries[key] = _Entry(self.base, now)
        else:
            e.delay = min(self.cap, e.delay * 2)
            e.last = now

    def forget(self, prefix: str) -> None:
        for key in [k for k in self._entries if k.startswith(prefix)]:
            del self._entries[key]
