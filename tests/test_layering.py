"""Protocol cores do no I/O, and dependencies point one way.

A pure module is imported in a fresh interpreter and what that interpreter then
holds in ``sys.modules`` is checked, so an I/O library pulled in indirectly (by a
package ``__init__``, or by anything the module imports) fails as surely as a
direct ``import trio`` in the module itself.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What a pure core must not load, with the reason. The standard library's own
# helpers (logging, json, struct, uuid...) load none of these.
FORBIDDEN = {
    "trio": "the async runtime",
    "trio_websocket": "websocket transport",
    "asyncio": "an event loop",
    "socket": "sockets",
    "_socket": "sockets",
    "ssl": "TLS on sockets",
    "_ssl": "TLS on sockets",
    "select": "readiness polling of file descriptors",
    "selectors": "readiness polling of file descriptors",
    "apsw": "the SQLite store",
    "grpc": "the CRI transport",
    "google.protobuf": "the CRI wire encoding (edged's _cri does the encoding)",
    "paho": "the MQTT client",
    "serial": "serial ports (pyserial)",
    "pymodbus": "a Modbus stack",
}

# The pure cores: every edgeproto module (the sync state machine, envelopes, the
# twin merge...), the mappers' Modbus codec/frames/read planner, serial line parser
# and twin messages, and edged's status and spec builders with the plain data they
# work on.
PURE_MODULES = sorted(
    ["edgeproto"]
    + [f"edgeproto.{p.stem}" for p in (ROOT / "edgeproto").glob("*.py") if p.stem != "__init__"]
    + [
        "mappers.modbus._codec",
        "mappers.modbus._frame",
        "mappers.modbus._plan",
        "mappers.serial._parse",
        "mappers._twin",
        "edgeagent.edged._status",
        "edgeagent.edged._spec",
        "edgeagent.edged._model",
        "edgeagent.edged._backoff",
        "edgeagent.edged._grpcwire",
        "edgeagent.edged._logs",
    ]
)

_PROBE = "import importlib, sys; importlib.import_module(sys.argv[1]); print(*sys.modules)"


def loaded_by(module: str, *, path: Path = ROOT) -> set[str]:
    """Every module a fresh interpreter holds after ``import module``."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, module],
        cwd=path,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def forbidden_in(modules: set[str]) -> dict[str, str]:
    """The forbidden names (with why) among ``modules``, submodules counted."""
    return {
        bad: why
        for bad, why in FORBIDDEN.items()
        if any(name == bad or name.startswith(bad + ".") for name in modules)
    }


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_core_loads_no_io(module: str) -> None:
    assert forbidden_in(loaded_by(module)) == {}


def test_the_check_sees_what_a_package_init_drags_in(tmp_path: Path) -> None:
    # the defect this check exists for: a pure module whose package __init__ loads trio
    pkg = tmp_path / "heavy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from heavy import _runner\n")
    (pkg / "_runner.py").write_text("import trio\n")
    (pkg / "_pure.py").write_text("import struct\n")
    found = forbidden_in(loaded_by("heavy._pure", path=tmp_path))
    assert "trio" in found and "socket" in found


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("edgeagent", {"cloudgateway", "mappers"}),
        ("cloudgateway", {"edgeagent", "mappers"}),
        ("edgeproto", {"edgeagent", "cloudgateway", "mappers"}),
        ("mappers", {"edgeagent", "cloudgateway"}),
    ],
)
def test_dependencies_point_one_way(package: str, forbidden: set[str]) -> None:
    for path in (ROOT / package).rglob("*.py"):
        assert not imports_of(path) & forbidden, path


# The launcher (``edgeagent launch``, the unit's command) and the slots it works
# with: the standard library only, and of edgeagent only these modules.
LAUNCHER_MODULES = {
    "edgeagent",
    "edgeagent._cli",
    "edgeagent._launch",
    "edgeagent._slots",
    # the one durable file write (edgeio's package loads its names on first use)
    "edgeio",
    "edgeio._errors",
    "edgeio._files",
}
_LAUNCHER_PROBE = """\
import sys
before = set(sys.modules)
from edgeagent._cli import main
main(["launch", "--status", "--releases", sys.argv[1], "--data-dir", sys.argv[2]])
import edgeagent._launch, subprocess, selectors, sqlite3  # what supervisor mode adds
print(*(set(sys.modules) - before), file=sys.stderr)
"""


def test_the_launcher_loads_the_standard_library_only(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _LAUNCHER_PROBE, str(tmp_path / "R"), str(tmp_path / "D")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "current:" in out.stdout  # it ran
    loaded = set(out.stderr.split())
    ours = {m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names}
    assert ours <= LAUNCHER_MODULES, ours - LAUNCHER_MODULES
    # ...and so do the imports inside their functions (install, roll back), and
    # edgeio._files imports the standard library only.
    for node in ast.walk(ast.parse((ROOT / "edgeio" / "_files.py").read_text())):
        if isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0):
            names = (
                [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            )
            assert all((n or "").split(".")[0] in sys.stdlib_module_names for n in names), names
    for name in ("_launch.py", "_slots.py", "_install.py"):
        tree = ast.parse((ROOT / "edgeagent" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = {a.name.split(".")[0] for a in node.names}
                assert tops <= sys.stdlib_module_names, (name, tops)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    assert {a.name for a in node.names} <= {"_install"} or node.module in (
                        "_slots",
                        "_install",
                    ), (name, node.module)
                elif node.module != "edgeio._files":
                    assert (node.module or "").split(".")[0] in sys.stdlib_module_names, name
