"""Protocol cores do no I/O, and dependencies point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO_MODULES = {
    "trio",
    "socket",
    "apsw",
    "grpc",
    "ssl",
    "asyncio",
    "trio_websocket",
    "paho",
    "serial",
    "pymodbus",
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("path", sorted((ROOT / "edgeproto").glob("*.py")), ids=lambda p: p.name)
def test_edgeproto_is_sans_io(path: Path) -> None:
    assert not imports_of(path) & IO_MODULES


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("edgeagent", {"cloudgateway", "mappers"}),
        ("cloudgateway", {"edgeagent", "mappers"}),
        ("edgeproto", {"edgeagent", "cloudgateway", "mappers"}),
    ],
)
def test_dependencies_point_one_way(package: str, forbidden: set[str]) -> None:
    for path in (ROOT / package).rglob("*.py"):
        assert not imports_of(path) & forbidden, path
