"""One implementation of each shared job (issue 11, defect 7): the definitions
below exist exactly once across the packages, and the dead ones not at all."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import edgeproto
from edgeagent.edged._model import ContainerInfo
from edgeagent.edged._status import ContainerView, container_status

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edgeproto", "edgeio", "edgeagent", "cloudgateway", "mappers", "firmware-tools")

ONCE = {
    "rfc3339": "edgeproto/_schema.py",
    "parse_rfc3339": "edgeproto/_schema.py",
    "parse_mqtt_url": "edgeio/_mqtt.py",
    "write_atomic": "edgeio/_files.py",
    "fsync_dir": "edgeio/_files.py",
}
GONE = ("FrameDecoder", "frame_message", "entries_by_key")


def _definitions() -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    found[node.name].append(str(path.relative_to(ROOT)))
    return found


def test_each_shared_job_is_defined_once_and_dead_code_is_gone() -> None:
    found = _definitions()
    for name, where in ONCE.items():
        assert found[name] == [where], (name, found[name])
    for name in GONE:
        assert not found[name], (name, found[name])
        assert not hasattr(edgeproto, name)


def test_container_times_are_converted_from_nanoseconds_by_the_caller() -> None:
    ns = 1_700_000_000_123_456_789
    info = ContainerInfo(
        id="c1",
        sandbox_id="s1",
        name="main",
        attempt=0,
        state="running",
        created_at=ns,
        started_at=ns,
        finished_at=0,
        exit_code=0,
        reason="",
        message="",
        image="img",
        image_ref="sha256:0",
        log_path="",
        hash="h",
        kind="app",
        grace=30,
    )
    status = container_status(ContainerView("main", "img", info, None, None, True, True))
    assert status["state"] == {"running": {"startedAt": "2023-11-14T22:13:20Z"}}
    assert edgeproto.rfc3339(ns / 1e9) == "2023-11-14T22:13:20Z"
