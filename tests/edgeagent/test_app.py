"""The module supervisor: a module that fails, before or after it reports
started, is restarted with the policy's backoff and never keeps the modules
after it from starting (the fake clock jumps through the backoff)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
import trio

from edgeagent._app import RestartPolicy, supervise

POLICY = RestartPolicy(initial=1.0, cap=8.0, healthy_after=60.0)


class Boom(Exception):
    pass


@dataclass
class Module:
    """Fails ``fail_before`` times before reporting started, then ``fail_after``
    times after it, then runs for good. Records when each attempt began."""

    fail_before: int = 0
    fail_after: int = 0
    attempts: list[float] = field(default_factory=list)
    running: trio.Event = field(default_factory=trio.Event)
    seventh_attempt: trio.Event = field(default_factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.attempts.append(trio.current_time())
        if len(self.attempts) == 7:
            self.seventh_attempt.set()
        if self.fail_before:
            self.fail_before -= 1
            raise Boom("before start")
        task_status.started()
        if self.fail_after:
            self.fail_after -= 1
            raise Boom("after start")
        self.running.set()
        await trio.sleep_forever()


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


async def start_all(nursery: trio.Nursery, modules: list[Module]) -> None:
    # Before the fix a failed first start made nursery.start wait forever: the
    # deadline turns that hang into a failure.
    with trio.fail_after(1000):
        for i, m in enumerate(modules):
            await nursery.start(supervise, f"m{i}", m.run, POLICY)


async def test_a_module_failing_before_start_once_then_working(
    autojump_clock: trio.abc.Clock,
) -> None:
    flaky, after = Module(fail_before=1), Module()
    async with trio.open_nursery() as nursery:
        await start_all(nursery, [flaky, after])
        with trio.fail_after(1000):
            await flaky.running.wait()
            await after.running.wait()
        assert gaps(flaky.attempts) == [POLICY.initial]
        nursery.cancel_scope.cancel()


async def test_a_module_failing_after_start_is_restarted_with_backoff(
    autojump_clock: trio.abc.Clock,
) -> None:
    failing, after = Module(fail_after=5), Module()
    async with trio.open_nursery() as nursery:
        await start_all(nursery, [failing, after])
        with trio.fail_after(1000):
            await failing.running.wait()
        assert after.running.is_set()
        assert gaps(failing.attempts) == [1.0, 2.0, 4.0, 8.0, 8.0]  # doubled, capped
        nursery.cancel_scope.cancel()


async def test_a_module_failing_forever_before_start_blocks_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    broken, after = Module(fail_before=10**9), Module()
    async with trio.open_nursery() as nursery:
        await start_all(nursery, [broken, after])
        with trio.fail_after(1000):
            await after.running.wait()
            await broken.seventh_attempt.wait()
        assert gaps(broken.attempts)[:6] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
        nursery.cancel_scope.cancel()


async def test_a_long_healthy_run_resets_the_backoff(autojump_clock: trio.abc.Clock) -> None:
    m = Module()
    calls = 0
    fourth = trio.Event()

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal calls
        calls += 1
        m.attempts.append(trio.current_time())
        task_status.started()
        if calls in (1, 2):
            raise Boom("fails at once")
        if calls == 3:
            await trio.sleep(POLICY.healthy_after + 1)
            raise Boom("fails after a healthy run")
        fourth.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        with trio.fail_after(1000):
            await nursery.start(supervise, "m", run, POLICY)
            await fourth.wait()
        g = gaps(m.attempts)
        assert g[:2] == [1.0, 2.0]
        assert g[2] == pytest.approx(POLICY.healthy_after + 1 + POLICY.initial)
        nursery.cancel_scope.cancel()
