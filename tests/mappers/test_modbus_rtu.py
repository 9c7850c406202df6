"""Modbus RTU over a socat pty pair: pymodbus's serial server on one end, the mapper's
pyserial port on the other; two slaves on one bus; CRC errors, timeouts, a vanishing port."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from tests.conftest import wait_for
from tests.mappers._docs import device, model, write_yaml
from tests.mappers.conftest import Broker, PtyPair, Sim, Watcher, start_modbus_sim
from tests.mappers.test_modbus_tcp import start_shell, twin_has


def com(port: str, slave: int, **extra: object) -> dict[str, object]:
    return {
        "slaveID": slave,
        "com": {
            "serialPort": port,
            "baudRate": 9600,
            "dataBits": 8,
            "parity": "none",
            "stopBits": 1,
        },
        **extra,
    }


async def test_two_slaves_on_one_bus_read_and_write(
    tmp_path: Path,
    mosquitto: Broker,
    pty_pair: PtyPair,
    modbus_sims: list[Sim],
    watcher: Watcher,
    nursery: trio.Nursery,
) -> None:
    modbus_sims.append(start_modbus_sim("--rtu", pty_pair.b, "--slaves", "1,2", "--static"))
    props = ["temperature", "humidity", "setpoint"]
    path = write_yaml(
        tmp_path / "d.yaml",
        [
            model(),
            device("rtu-1", com(pty_pair.a, 1), props),
            device("rtu-2", com(pty_pair.a, 2), props),
        ],
    )
    shell = await start_shell(nursery, mosquitto, config_path=path)
    await watcher.wait_for(twin_has("rtu-1", "temperature", "21.5"))
    await watcher.wait_for(twin_has("rtu-2", "temperature", "31.5"))
    assert watcher.twin_values("rtu-2")["humidity"] == "45.6"
    t1, t2 = shell.devices["rtu-1"].task, shell.devices["rtu-2"].task
    assert t1.bus is t2.bus  # one lock, one port, served in turn
    delta = {"event_id": "d", "timestamp": 1, "twin": {}, "delta": {"setpoint": "-42"}}
    watcher.mqtt.publish("$hw/events/device/default/rtu-2/twin/update/delta", json.dumps(delta))
    await watcher.wait_for(twin_has("rtu-2", "setpoint", "-42"))
    # Slave 1 is read again after the write to slave 2, and is untouched.
    mark = len(watcher.messages)
    await wait_for(
        lambda: any(
            t == "$hw/events/device/default/rtu-1/twin/update"
            and isinstance(b, dict)
            and "setpoint" in b.get("twin", {})
            for t, b in watcher.messages[mark:]
        ),
        what="a report of rtu-1's setpoint read after the write to rtu-2",
    )
    assert watcher.twin_values("rtu-1")["setpoint"] == "0"
    stats = t1.bus.statistics()
    assert stats["timeouts"] == 0 and stats["crc_errors"] == 0
    assert stats["responses"] >= stats["requests"] - 1  # one may be in flight
    # the 3.5-character gap at 9600 baud 8N1 is 3.65 ms
    assert abs(t1.bus.frame_gap - 3.5 * 10 / 9600) < 1e-9  # type: ignore[attr-defined]


async def test_crc_errors_are_counted_and_retried(
    tmp_path: Path,
    mosquitto: Broker,
    pty_pair: PtyPair,
    modbus_sims: list[Sim],
    watcher: Watcher,
    nursery: trio.Nursery,
) -> None:
    modbus_sims.append(
        start_modbus_sim("--rtu", pty_pair.b, "--slaves", "1", "--static", "--corrupt-every", "3")
    )
    cfg = com(pty_pair.a, 1, timeout=300, retries=1)
    path = write_yaml(tmp_path / "d.yaml", [model(), device("noisy", cfg, ["temperature"])])
    shell = await start_shell(nursery, mosquitto, config_path=path)
    task = shell.devices["noisy"].task
    await watcher.wait_for(lambda t, b: task.statistics()["crc_errors"] >= 3, timeout=10)
    await watcher.wait_for(twin_has("noisy", "temperature", "21.5"))
    stats = task.statistics()
    assert stats["retries"] >= 3
    assert stats["state"] == "online"  # a retry answered every time
    assert task.bus.statistics()["crc_errors"] == stats["crc_errors"]


async def test_silent_slave_times_out_and_goes_offline(
    tmp_path: Path,
    mosquitto: Broker,
    pty_pair: PtyPair,
    modbus_sims: list[Sim],
    watcher: Watcher,
    nursery: trio.Nursery,
) -> None:
    # nothing serves the other end of the pair: every request times out
    cfg = com(pty_pair.a, 7, timeout=100, retries=0, offlineAfter=3)
    path = write_yaml(tmp_path / "d.yaml", [model(), device("ghost", cfg, ["temperature"])])
    shell = await start_shell(nursery, mosquitto, config_path=path)
    await watcher.wait_for(
        lambda t, b: t == "$hw/events/device/default/ghost/state/update" and b["state"] == "offline"
    )
    stats = shell.devices["ghost"].task.statistics()
    assert stats["timeouts"] >= 3
    assert "no answer" in stats["properties"]["temperature"]["error"]
    assert "ghost" not in {t.split("/")[4] for t, _ in watcher.messages if "twin/update" in t}


async def test_port_disappears_and_returns(
    tmp_path: Path,
    mosquitto: Broker,
    pty_pair: PtyPair,
    modbus_sims: list[Sim],
    watcher: Watcher,
    nursery: trio.Nursery,
) -> None:
    from tests.mappers.conftest import stop

    sim = start_modbus_sim("--rtu", pty_pair.b, "--static")
    modbus_sims.append(sim)
    cfg = com(pty_pair.a, 1, timeout=150, retries=0, offlineAfter=2)
    path = write_yaml(tmp_path / "d.yaml", [model(), device("usb", cfg, ["humidity"])])
    shell = await start_shell(nursery, mosquitto, config_path=path)
    await watcher.wait_for(twin_has("usb", "humidity", "45.6"))
    stop(sim.proc)
    pty_pair.stop()  # the USB adapter is unplugged: the tty goes away
    await watcher.wait_for(lambda t, b: watcher.states("usb") == ["online", "offline"])
    task = shell.devices["usb"].task
    assert task.statistics()["bus_errors"] >= 1
    pty_pair.start()
    modbus_sims.append(start_modbus_sim("--rtu", pty_pair.b, "--static"))
    await watcher.wait_for(lambda t, b: watcher.states("usb") == ["online", "offline", "online"])
    assert task.bus.statistics()["opens"] >= 2
