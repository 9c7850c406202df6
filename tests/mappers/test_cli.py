"""The console scripts as processes: standalone YAML against a bare mosquitto."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from tests.mappers._docs import device, model, write_yaml
from tests.mappers.conftest import Broker, Sim, Watcher, stop
from tests.mappers.test_modbus_tcp import twin_has

BIN = Path(sys.executable).parent


def spawn(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / argv[0]), *argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def test_modbus_mapper_standalone_process(
    tmp_path: Path, mosquitto: Broker, modbus_tcp: Sim, watcher: Watcher
) -> None:
    cfg = {"slaveID": 1, "tcp": {"ip": "127.0.0.1", "port": modbus_tcp.port}}
    path = write_yaml(
        tmp_path / "devices.yaml", [model(), device("meter", cfg, ["temperature", "humidity"])]
    )
    proc = spawn("modbus-mapper", "--mqtt", mosquitto.url, "--config", str(path))
    try:
        await watcher.wait_for(twin_has("meter", "humidity", "45.6"))
        # the retained status document
        await watcher.wait_for(
            lambda t, b: (
                t == "edgeflock/mappers/modbus/standalone/status"
                and b["devices"]["meter"]["state"] == "online"
            ),
            timeout=12,
        )
        os.kill(proc.pid, signal.SIGTERM)
        assert await trio.to_thread.run_sync(proc.wait, 10) == 0
    finally:
        stop(proc)


def test_bad_config_exits_2_with_a_message(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "devices.yaml", [device("meter", {}, ["status"])])
    out = subprocess.run(
        [str(BIN / "serial-mapper"), "--mqtt", "tcp://127.0.0.1:1", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "DeviceModel 'thermo-model' not in the file" in out.stdout
