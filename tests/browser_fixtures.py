"""A real headless Chromium for the dashboard's tests: Debian's ``chromium``
driven through Debian's ``chromium-driver`` by Selenium, offline (Selenium
Manager is given both paths and never downloads anything), with a fresh profile.
Stopped at the end, and every process it started is killed by PID.

The gateway under test runs in the test's trio loop, so every WebDriver call
(they block) goes through ``Browser``, which runs it in a worker thread."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from tests.conftest import wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# As root Chromium needs --no-sandbox; the rest keep it from reaching for the
# network (updates, sync, field trials) on a machine that has none.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
T = TypeVar("T")


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid``, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """``pid``'s processes (children, their children, ...) by PID, with their
    start times: a PID that names another process later is not theirs."""
    parents: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            parents.setdefault(st[0], []).append((int(entry), st[1]))
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        for child, started in parents.get(todo.pop(), []):
            found[child] = started
            todo.append(child)
    return found


def kill_exactly(procs: dict[int, int]) -> None:
    """SIGKILL each PID that still names the process started at that time."""
    for pid, started in procs.items():
        st = _stat(pid)
        if st is not None and st[1] == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Browser:
    """One Chromium window, shared by the tests of a module."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def run(self, fn: Callable[[Any], T]) -> T:
        """``fn(driver)`` in a worker thread."""
        return await trio.to_thread.run_sync(fn, self.driver)

    async def js(self, script: str, *args: Any) -> Any:
        """The value of ``script`` (a function body: ``return ...``) in the page."""
        return await self.run(lambda d: d.execute_script(script, *args))

    async def wait_js(self, script: str, *args: Any, timeout: float = 15.0, what: str = "") -> Any:
        """Poll ``script`` until it returns something truthy; return that."""
        last: list[Any] = [None]

        async def check() -> Any:
            last[0] = await self.js(script, *args)
            return last[0]

        return await wait_for(
            check,
            timeout=timeout,
            interval=0.1,
            what=lambda: f"{what or script} (page: {self._page_text()})",
        )

    def _page_text(self) -> str:
        try:
            text = self.driver.execute_script("return document.body.innerText")
        except Exception as exc:  # the message must not hide the failure itself
            return f"<unreadable: {exc}>"
        return str(text)[:1500]

    async def get(self, url: str) -> None:
        await self.run(lambda d: d.get(url))

    async def screenshot(self, path: Path) -> None:
        await self.run(lambda d: d.save_screenshot(str(path)))

    async def console_errors(self) -> list[str]:
        """The page's console errors since the last call, but for failed
        requests (the tests make some on purpose: a 401, a 404)."""
        entries = await self.run(lambda d: d.get_log("browser"))
        return [
            e["message"]
            for e in entries
            if e.get("level") == "SEVERE" and "Failed to load resource" not in e["message"]
        ]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    offline = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: never the network
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    service = Service(executable_path=CHROMEDRIVER, log_output=str(log))
    driver = webdriver.Chrome(service=service, options=options)
    driver_pid = service.process.pid
    try:
        yield Browser(driver)
    finally:
        procs = descendants(driver_pid)  # chromium and its helpers, before they are orphaned
        if (st := _stat(driver_pid)) is not None:
            procs[driver_pid] = st[1]
        with contextlib.suppress(Exception):
            driver.quit()
        kill_exactly(procs)
        if offline is None:
            del os.environ["SE_OFFLINE"]
        else:
            os.environ["SE_OFFLINE"] = offline
