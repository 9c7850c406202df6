"""Device / DeviceModel manifests for the tests (devices.kubeedge.io/v1beta1 shape)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MODEL_PROPS = [
    {"name": "temperature", "type": "float", "accessMode": "ReadOnly", "unit": "Cel"},
    {"name": "humidity", "type": "float", "accessMode": "ReadOnly", "unit": "%"},
    {"name": "status", "type": "int", "accessMode": "ReadOnly"},
    {"name": "setpoint", "type": "int", "accessMode": "ReadWrite", "maximum": 5000},
    {"name": "target", "type": "float", "accessMode": "ReadWrite"},
    {"name": "relay", "type": "boolean", "accessMode": "ReadWrite"},
    {"name": "missing", "type": "int", "accessMode": "ReadOnly"},
]

VISITORS: dict[str, dict[str, Any]] = {
    # KubeEdge keys: isRegisterSwap = word order little (the sim stores "CDAB")
    "temperature": {
        "register": "HoldingRegister",
        "offset": 0,
        "limit": 2,
        "dataType": "float32",
        "isRegisterSwap": True,
    },
    "humidity": {"register": "HoldingRegister", "offset": 2, "limit": 1, "scale": 0.1},
    "status": {"register": "HoldingRegister", "offset": 3, "limit": 1, "dataType": "uint16"},
    "setpoint": {"register": "HoldingRegister", "offset": 10, "limit": 1, "dataType": "int16"},
    "target": {"register": "HoldingRegister", "offset": 11, "limit": 2, "dataType": "float32"},
    "relay": {"register": "CoilRegister", "offset": 3, "limit": 1},
    "missing": {"register": "HoldingRegister", "offset": 200, "limit": 1},
}


def model(name: str = "thermo-model") -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"protocol": "modbus", "properties": MODEL_PROPS},
    }


def device(
    name: str,
    config: dict[str, Any],
    props: list[str],
    *,
    cycle_ms: int = 100,
    model_name: str = "thermo-model",
    desired: dict[str, str] | None = None,
) -> dict[str, Any]:
    properties = []
    for p in props:
        entry: dict[str, Any] = {
            "name": p,
            "collectCycle": cycle_ms,
            "reportCycle": cycle_ms,
            "reportToCloud": True,
            "visitors": {"protocolName": "modbus", "configData": dict(VISITORS[p])},
        }
        if desired and p in desired:
            entry["desired"] = {"value": desired[p]}
        properties.append(entry)
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "deviceModelRef": {"name": model_name},
            "nodeName": "edge-1",
            "protocol": {"protocolName": "modbus", "configData": config},
            "properties": properties,
        },
    }


def write_yaml(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


def membership_dev(doc: dict[str, Any], model_doc: dict[str, Any]) -> dict[str, Any]:
    """The agent's DEV object for a Device manifest."""
    name = doc["metadata"]["name"]
    return {
        "id": name,
        "name": name,
        "namespace": "default",
        "state": "unknown",
        "twin": {},
        "spec": doc["spec"],
        "model": model_doc["spec"],
    }
