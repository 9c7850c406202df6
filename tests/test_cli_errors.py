"""Start-up errors of both command-line programs, run as the operator runs
them (subprocesses): one ``error: ...`` line per error naming the file or the
address, a non-zero exit, the traceback only with ``--log-level DEBUG``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=60, check=False
    )


def agent(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run("-m", "edgeagent._cli", "run", "--data-dir", str(data), *extra)


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture
def enrolled(tmp_path: Path) -> Path:
    """An enrolled data dir (the credentials are never used: each test breaks
    the start before the agent connects)."""
    from cloudgateway._pki import load_or_create_pki
    from tests.conftest import write_node_credentials

    data = tmp_path / "agent"
    write_node_credentials(load_or_create_pki(tmp_path / "gw"), "pi-1", data)
    (data / "enrollment.json").write_text(json.dumps({"node": "pi-1", "hub": "wss://127.0.0.1:9/"}))
    return data


def test_agent_with_a_store_that_is_not_a_database(enrolled: Path) -> None:
    (enrolled / "meta.db").write_bytes(b"not a database, " * 100)
    assert error_lines(agent(enrolled)) == [
        f"error: cannot open {enrolled / 'meta.db'}: file is not a database"
    ]
    debug = agent(enrolled, "--log-level", "DEBUG")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_agent_with_unusable_credentials(enrolled: Path) -> None:
    """Before, the hub module failed on every attempt and the agent ran on
    without ever connecting (a traceback per retry)."""
    (enrolled / "node.key").unlink()
    (enrolled / "node.key").mkdir()  # unreadable as a key, even for root
    (line,) = error_lines(agent(enrolled))
    assert line.startswith(f"error: node credentials in {enrolled} unusable")


def test_agent_with_a_bad_data_dir(tmp_path: Path) -> None:
    (line,) = error_lines(agent(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere" / "enrollment.json") in line


def test_gateway_on_an_occupied_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            "-m", "cloudgateway._cli", "serve", "--data-dir", str(tmp_path / "gw"),
            "--hub", f"127.0.0.1:{port}", "--join", "127.0.0.1:0", "--api", "127.0.0.1:0",
        )  # fmt: skip
    (line,) = error_lines(result)
    assert f"hub 127.0.0.1:{port}" in line and "Address already in use" in line


def test_gateway_with_a_bad_data_dir(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = run(
        "-m", "cloudgateway._cli", "serve", "--data-dir", str(not_a_dir),
        "--hub", "127.0.0.1:0", "--join", "127.0.0.1:0", "--api", "127.0.0.1:0",
    )  # fmt: skip
    (line,) = error_lines(result)
    assert str(not_a_dir) in line
