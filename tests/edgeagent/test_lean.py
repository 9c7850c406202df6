"""The agent's memory measures: what the process does not load, and heap trimming."""

from __future__ import annotations

import json
import subprocess
import sys

from edgeagent._lean import trim_heap
from edgeio import _heap

PROBE = """
import json, sys
import edgeagent._cli, edgeagent._app, edgeagent._hub
from edgeagent._config import load_config
print(json.dumps(sorted(sys.modules)))
"""


def test_the_agent_imports_no_metadata_parsers_grpc_paho_or_pymodbus() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(json.loads(out))
    assert "trio_websocket" in loaded and "apsw" in loaded
    heavy_ones = ("importlib.metadata", "email", "zipfile", "tomllib", "grpc", "paho", "pymodbus")
    for heavy in (*heavy_ones, "prometheus_client", "edgeio._mqtt", "google.protobuf", "h2"):
        assert heavy not in loaded, heavy


def test_trim_heap_uses_glibc_malloc_trim() -> None:
    garbage = [bytearray(4096) for _ in range(2000)]
    del garbage
    trim_heap()
    assert _heap._libc, "glibc's malloc_trim was not found on this Debian machine"
    assert _heap._libc.malloc_trim(0) in (0, 1)
