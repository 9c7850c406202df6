"""What a modbus-mapper following the agent loads: its own code, trio and paho, not
the libraries it never uses (measured in BENCHMARKS.md, "Modbus mapper")."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import mappers.modbus._cli, mappers._runner, mappers.modbus._device
from edgeio._mqtt import _open_paho
_open_paho("probe")  # what MqttClient.run does first
print(json.dumps(sorted(sys.modules)))
"""


def test_a_mapper_following_the_agent_loads_no_yaml_cbor_sync_or_http() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(json.loads(out))
    assert {"trio", "paho.mqtt.client", "edgeproto.topics", "mappers.modbus._bus"} <= loaded
    never = {"yaml", "cbor2", "edgeproto._sync", "edgeproto._schema", "urllib.request",
             "http.client", "email", "pymodbus", "serial"}  # fmt: skip
    assert never.isdisjoint(loaded), never & loaded
