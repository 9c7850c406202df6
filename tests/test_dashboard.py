"""The web dashboard (/ui/ on the API port) in a real headless Chromium, against
a real gateway, agent, mosquitto, pymodbus server and modbus-mapper: a wrong
token is refused; nodes go NotReady when their agent stops; pods show their
last Event; a device's value changes on the page and its plot gains a point; a
desired value set from the page reaches the Modbus register; objects that do
not exist say so; the page fits a phone's width. Screenshots go to the test's
tmp_path."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from pymodbus.client import ModbusTcpClient

from tests.browser_fixtures import Browser, browser
from tests.conftest import Gateway, join_node, start_agent, start_gateway
from tests.mappers.conftest import Sim, stop
from tests.mqtt_fixtures import Broker, open_broker
from tests.test_modbus_e2e import sim, thermometer

__all__ = ["browser", "sim"]  # fixtures: the browser shared here, the Modbus simulator

ROOT = Path(__file__).resolve().parent.parent
DEVICES = "/apis/devices.kubeedge.io/v1beta1/namespaces/default"


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with open_broker(tmp_path) as b:
        yield b


async def type_token(b: Browser, token: str) -> None:
    def fill(d: Any) -> None:
        from selenium.webdriver.common.by import By

        box = d.find_element(By.ID, "login-token")
        box.clear()
        box.send_keys(token)
        d.find_element(By.ID, "login-submit").click()

    await b.run(fill)


async def log_in(b: Browser, gw: Gateway) -> None:
    await b.get(f"{gw.api_url}/ui/")
    await b.wait_js("return !document.getElementById('login').hidden", what="the login form")
    await type_token(b, gw.token)
    await b.wait_js("return !document.getElementById('app').hidden", what="the dashboard")


def text_of(selector: str) -> str:
    """A script returning the text of the first element ``selector`` matches ('' if none)."""
    return f"const e = document.querySelector({selector!r}); return e ? e.textContent : '';"


async def test_login_nodes_pods_events_and_missing_objects(
    browser: Browser, nursery: trio.Nursery, tmp_path: Path
) -> None:
    b = browser
    gw = await start_gateway(nursery, tmp_path / "gw", grace=1.5)
    await join_node(gw, "pi-ui", tmp_path / "agent")
    agent = await start_agent(nursery, tmp_path / "agent")

    # A wrong token is refused, visibly, and nothing is kept.
    await b.get(f"{gw.api_url}/ui/")
    await b.wait_js("return !document.getElementById('login').hidden", what="the login form")
    await type_token(b, "not-the-admin-token")
    refused = await b.wait_js(
        "const e = document.getElementById('login-error'); return !e.hidden && e.textContent",
        what="the refusal",
    )
    assert "refused" in refused and "401" in refused
    assert await b.js("return document.getElementById('app').hidden") is True
    assert await b.js("return sessionStorage.length + localStorage.length") == 0
    await b.screenshot(tmp_path / "01-wrong-token.png")

    # The right one opens the dashboard; it lives in sessionStorage only.
    await type_token(b, gw.token)
    await b.wait_js("return !document.getElementById('app').hidden", what="the dashboard")
    assert await b.js("return sessionStorage.getItem('edgeflock.token')") == gw.token
    assert await b.js("return localStorage.length") == 0
    card = '.node[data-name="pi-ui"]'
    await b.wait_js(
        f"const e = document.querySelector('{card} .ready'); return e && e.textContent === 'Ready'",
        what="pi-ui Ready",
    )
    arch = await b.js(text_of(card + " .arch"))
    assert arch and arch != "unknown"
    assert await b.js(text_of(card + " .heartbeat")) == "connected"
    assert await b.js(text_of(card + " .ready-since time"))

    # A pod bound to the node appears on its card through the watch.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {"nodeName": "pi-ui", "containers": [{"name": "app", "image": "busybox"}]},
    }
    code, body = await gw.api("POST", "/api/v1/namespaces/default/pods", pod)
    assert code == 201, body
    await b.wait_js(
        f"return document.querySelector('{card} .pod-chip[data-name=\"web\"]')",
        what="pod web on pi-ui's card",
    )
    await b.screenshot(tmp_path / "02-nodes-ready.png")

    # The agent stops: the node goes NotReady (after the shortened grace), with
    # when it went offline.
    await agent.stop()
    await b.wait_js(
        f"const e = document.querySelector('{card} .ready'); return e && e.textContent === 'NotReady'",
        what="pi-ui NotReady",
    )
    offline = await b.js(f"return document.querySelector('{card} .offline-since time').dataset.ms")
    heard = await b.js(f"return document.querySelector('{card} .heartbeat time').dataset.ms")
    assert int(heard) < int(offline)  # last heard from before it was declared offline
    assert "1 NotReady" in await b.js(text_of(".summary"))
    await b.screenshot(tmp_path / "03-node-not-ready.png")

    # A pod no node takes: its card shows the scheduler's Event as its last.
    lost = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "lost"},
        "spec": {
            "nodeSelector": {"no-such": "node"},
            "containers": [{"name": "app", "image": "busybox"}],
        },
    }
    code, body = await gw.api("POST", "/api/v1/namespaces/default/pods", lost)
    assert code == 201, body
    await b.get(f"{gw.api_url}/ui/#/pods")
    lost_card = '.pod[data-name="default/lost"]'
    event = await b.wait_js(
        f"const e = document.querySelector('{lost_card} .last-event'); "
        "return e && e.textContent.includes('FailedScheduling') && e.textContent",
        what="the lost pod's last event",
    )
    assert "FailedScheduling" in event
    assert await b.js(text_of(lost_card + " .phase")) == "Pending"
    assert await b.js(text_of(lost_card + " .restarts")) == "0"
    assert await b.js(text_of('.pod[data-name="default/web"] .phase'))
    await b.screenshot(tmp_path / "04-pods.png")

    # Recent events, newest first.
    await b.get(f"{gw.api_url}/ui/#/events")
    await b.wait_js(
        "return [...document.querySelectorAll('table.events td')].some(td => td.textContent === 'FailedScheduling')",
        what="the FailedScheduling event in the events view",
    )

    # Objects that do not exist say so.
    await b.get(f"{gw.api_url}/ui/#/nodes/pi-nowhere")
    msg = await b.wait_js(text_of(".not-found"), what="a not-found message")
    assert 'Node "pi-nowhere" does not exist' in msg
    await b.get(f"{gw.api_url}/ui/#/devices/default/no-such-device")
    msg = await b.wait_js(text_of(".not-found"), what="a not-found message")
    assert 'Device "default/no-such-device" does not exist' in msg
    await b.screenshot(tmp_path / "05-not-found.png")

    # Many devices: read a page at a time (limit/continue), each page live.
    model = {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": "counter"},
        "spec": {"protocol": "modbus", "properties": [{"name": "n", "type": "INT"}]},
    }
    code, body = await gw.api("POST", f"{DEVICES}/devicemodels", model)
    assert code == 201, body
    for i in range(30):
        dev = {
            "apiVersion": "devices.kubeedge.io/v1beta1",
            "kind": "Device",
            "metadata": {"name": f"bulk-{i:02}"},
            "spec": {"deviceModelRef": {"name": "counter"}, "properties": [{"name": "n"}]},
        }
        code, body = await gw.api("POST", f"{DEVICES}/devices", dev)
        assert code == 201, body
    shown = "return document.querySelectorAll('.device').length === arguments[0]"
    await b.get(f"{gw.api_url}/ui/#/devices")
    await b.wait_js(shown, 25, what="a first page of 25")
    assert "more on the next pages" in await b.js(text_of(".summary"))
    await b.js("document.querySelector('.pager .next').click()")
    await b.wait_js(shown, 5, what="a second page of 5")
    assert await b.js("return document.querySelector('.pager .next').disabled") is True
    assert await b.js(
        "return document.querySelector('.device[data-name=\"default/bulk-29\"]') !== null"
    )
    patch = [{"op": "add", "path": "/spec/properties/0/desired", "value": {"value": "7"}}]
    code, body = await trio.to_thread.run_sync(
        gw.request, "PATCH", f"{DEVICES}/devices/bulk-29", patch, "application/json-patch+json"
    )
    assert code == 200, body
    await b.wait_js(
        "const e = document.querySelector("
        '\'.device[data-name="default/bulk-29"] .prop[data-prop="n"] .desired\');'
        "return e && e.textContent === '7'",
        what="bulk-29's new desired value on page 2",
    )
    await b.js("document.querySelector('.pager .prev').click()")
    await b.wait_js(shown, 25, what="the first page again")
    await b.screenshot(tmp_path / "06-device-pages.png")

    # At a phone's width nothing is wider than the screen.
    await b.run(lambda d: d.set_window_size(390, 844))
    try:
        await b.get(f"{gw.api_url}/ui/#/nodes")
        await b.wait_js(f"return document.querySelector('{card}')", what="the node card")
        await b.get(f"{gw.api_url}/ui/#/events")
        await b.wait_js("return document.querySelector('table.events')", what="the events")
        for view in ("nodes", "pods", "events"):
            await b.get(f"{gw.api_url}/ui/#/{view}")
            await b.wait_js("return document.querySelector('.summary').textContent !== 'loading…'")
            overflow = await b.js(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{view} is {overflow}px wider than a phone's screen"
            await b.screenshot(tmp_path / f"06-phone-{view}.png")
    finally:
        await b.run(lambda d: d.set_window_size(1280, 900))
    assert await b.console_errors() == []
    await gw.stop()


def holding_register(port: int, address: int, value: int | None = None) -> int:
    """Read (or first write) holding register ``address`` of the simulator."""
    client = ModbusTcpClient("127.0.0.1", port=port)
    try:
        assert client.connect()
        if value is not None:
            assert not client.write_register(address, value, device_id=1).isError()
        rr = client.read_holding_registers(address, count=1, device_id=1)
        return int(rr.registers[0])
    finally:
        client.close()


async def test_device_values_plots_and_desired_value_to_the_register(
    browser: Browser, nursery: trio.Nursery, tmp_path: Path, broker: Broker, sim: Sim
) -> None:
    b = browser
    gw = await start_gateway(nursery, tmp_path / "gw")
    await join_node(gw, "pi-modbus", tmp_path / "agent")
    await start_agent(nursery, tmp_path / "agent", mqtt=broker.url)
    log_path = tmp_path / "mapper.log"
    with log_path.open("wb") as log:
        mapper = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, not waited on here
            [sys.executable, "-m", "mappers.modbus", "--mqtt",
             f"tcp://127.0.0.1:{broker.port}", "--node", "pi-modbus"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        for obj in thermometer(sim.port):
            res = "devicemodels" if obj["kind"] == "DeviceModel" else "devices"
            code, body = await gw.api("POST", f"{DEVICES}/{res}", obj)
            assert code == 201, body

        await log_in(b, gw)
        # The list: each property's reported value, live.
        await b.get(f"{gw.api_url}/ui/#/devices")
        row = '.device[data-name="default/sensor-1"] .prop[data-prop="temperature"]'
        got = await b.wait_js(
            f"const e = document.querySelector('{row} .reported'); "
            "return e && !e.querySelector('.muted') && e.textContent",
            timeout=20,
            what="sensor-1's temperature in the list",
        )
        assert float(got) == pytest.approx(21.5)
        assert await b.js(f"return document.querySelector('{row} svg.chart') !== null")
        await b.screenshot(tmp_path / "10-devices.png")

        # The device: values, a plot per numeric property.
        await b.get(f"{gw.api_url}/ui/#/devices/default/sensor-1")
        panel = '.prop-panel[data-prop="humidity"]'
        got = await b.wait_js(
            f"const e = document.querySelector('{panel} .reported'); "
            "return e && !e.querySelector('.muted') && e.textContent",
            what="humidity on the device page",
        )
        assert float(got) == pytest.approx(45.6)
        points = int(
            await b.js(f"return document.querySelector('{panel} svg.chart').dataset.points")
        )
        assert points >= 1
        assert (
            await b.js(f"return document.querySelectorAll('{panel} svg.chart circle').length")
            == points
        )
        assert (
            await b.js(
                "return document.querySelector('.prop-panel[data-prop=\"temperature\"] form')"
            )
            is None
        )  # read-only

        # The sensor reads something new: the value changes on the page and its
        # plot gains a point.
        await trio.to_thread.run_sync(holding_register, sim.port, 2, 500)  # 50.0 %
        await b.wait_js(
            f"const e = document.querySelector('{panel} .reported'); "
            "return e && Number(e.textContent) === 50",
            timeout=20,
            what="humidity 50 on the device page",
        )
        after = int(
            await b.js(f"return document.querySelector('{panel} svg.chart').dataset.points")
        )
        assert after > points
        await b.screenshot(tmp_path / "11-device-changed.png")

        # A desired value set on the page reaches holding register 10.
        def set_desired(d: Any) -> None:
            from selenium.webdriver.common.by import By

            box = d.find_element(By.CSS_SELECTOR, '.desired-form[data-prop="setpoint"] input')
            box.clear()
            box.send_keys("37")
            d.find_element(By.CSS_SELECTOR, '.desired-form[data-prop="setpoint"] button').click()

        await b.run(set_desired)
        sp = '.prop-panel[data-prop="setpoint"]'
        await b.wait_js(
            f"const e = document.querySelector('{sp} .observed'); return e && e.textContent === '37'",
            timeout=20,
            what="the setpoint applied on the board",
        )
        assert await b.js(text_of(sp + " .desired")) == "37"
        assert await trio.to_thread.run_sync(holding_register, sim.port, 10) == 37
        code, obj = await gw.api("GET", f"{DEVICES}/devices/sensor-1")
        props = {p["name"]: p for p in obj["spec"]["properties"]}
        assert props["setpoint"]["desired"] == {"value": "37"}
        assert props["temperature"]["visitors"]["configData"]["dataType"] == "float32"  # rest kept
        await b.screenshot(tmp_path / "12-desired-set.png")

        # A value the API refuses is shown, not swallowed (twin values are at
        # most 4096 characters).
        await b.js(
            "const i = document.querySelector('.desired-form[data-prop=\"setpoint\"] input');"
            "i.value = 'x'.repeat(5000); i.form.requestSubmit();"
        )
        msg = await b.wait_js(
            "const e = document.querySelector('.desired-form[data-prop=\"setpoint\"] .form-message');"
            "return e && e.classList.contains('error') && e.textContent",
            what="the refusal of a too long value",
        )
        assert msg.startswith("not saved:")
        assert await b.console_errors() == []
    finally:
        stop(mapper, timeout=10)
        gw.scope.cancel()
