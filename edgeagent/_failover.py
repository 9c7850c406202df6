"""Which hub the agent connects to, and how long it waits first.

The agent knows the hub URL of every live gateway replica (the list the
gateway sends with each resync, kept in its store). It stays on the hub it is
on while that works; when a connect fails or a session drops, it moves to
another hub of the list, at random among the others, so the boards of a dead
replica spread over the survivors instead of all picking the same next one.
A list that no longer has the current hub moves the board at its next
reconnect, never by dropping a working session. Between attempts it waits
AWS's full jitter, growing with each failed attempt in a row; the first
reconnect after a working session is jittered too, so the hundreds of boards
a replica held do not all come back in the same instant.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

__all__ = ["Failover", "full_jitter"]


def full_jitter(
    attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random
) -> float:
    """AWS's full-jitter backoff: uniform in [0, min(cap, base * 2**attempt))."""
    return float(rng() * min(cap, base * (2 ** min(attempt, 30))))


class Failover:
    """The hub to connect to (``current``) among ``hubs``, and the wait before
    each attempt. ``rng`` makes the choices and the jitter (seeded in tests)."""

    def __init__(
        self,
        hubs: Sequence[str],
        current: str | None = None,
        *,
        base: float,
        cap: float,
        rng: random.Random | None = None,
    ) -> None:
        if not hubs:
            raise ValueError("a hub list needs at least one hub")
        self.hubs: tuple[str, ...] = tuple(hubs)
        self.current = current if current in self.hubs else self.hubs[0]
        self.attempt = 0  # failed attempts in a row
        self._base = base
        self._cap = cap
        self._rng = rng or random.Random()

    def update(self, hubs: Sequence[str]) -> bool:
        """A new list of hubs (never empty); True if it differs from the one
        known. The current hub stays current even when the list lost it: the
        board moves at its next reconnect."""
        if not hubs:
            raise ValueError("a hub list needs at least one hub")
        new = tuple(hubs)
        changed, self.hubs = new != self.hubs, new
        return changed

    def ended(self, *, worked: bool, hub_failed: bool, retry_after: float | None = None) -> float:
        """A session ended; returns the seconds to wait before the next attempt
        (on the then ``current`` hub). ``worked``: it had resynced. ``hub_failed``:
        the hub failed it (the connect failed, the session dropped, the gateway
        said "busy, come back later"), rather than this agent ending it.
        ``retry_after``: the wait the gateway asked for, jittered upwards."""
        if worked:
            self.attempt = 0
        if retry_after is not None:
            delay = retry_after * self._rng.uniform(1.0, 1.5)
        else:
            delay = full_jitter(self.attempt, self._base, self._cap, self._rng.random)
        if hub_failed and not worked:
            self.attempt += 1
        if hub_failed or self.current not in self.hubs:
            others = [h for h in self.hubs if h != self.current]
            if others:
                self.current = self._rng.choice(others)
        return delay
