"""Keeping the agent's resident memory small on 512 MB boards.

Two measured fixes (``bench/agent_idle.py``, numbers in BENCHMARKS.md):

* trio-websocket asks ``importlib.metadata`` for trio's version at import time,
  which loads the email, zipfile and csv packages to parse package metadata:
  ~0.9 MiB that the agent never uses again. ``import_trio_websocket`` answers
  that one question from ``trio.__version__`` instead, and only when nothing
  else in the process has imported ``importlib.metadata`` already.
* Start-up and resyncs leave freed blocks in the C heap that glibc keeps;
  ``trim_heap`` (edgeio's, shared with the mappers) collects garbage and hands
  free pages back (``malloc_trim``).
"""

from __future__ import annotations

import sys
import types

from edgeio._heap import trim_heap

__all__ = ["import_trio_websocket", "trim_heap"]


def import_trio_websocket() -> types.ModuleType:
    if "trio_websocket" in sys.modules:
        return sys.modules["trio_websocket"]
    if "importlib.metadata" in sys.modules:
        import trio_websocket

        return trio_websocket
    import trio

    def version(name: str) -> str:
        if name != "trio":  # not a question trio-websocket asks today; fail loudly
            raise LookupError(f"edgeagent's import shim knows only trio's version, not {name}")
        return str(trio.__version__)

    shim = types.ModuleType("importlib.metadata")
    shim.version = version  # type: ignore[attr-defined]
    sys.modules["importlib.metadata"] = shim
    try:
        import trio_websocket
    finally:
        del sys.modules["importlib.metadata"]
    return trio_websocket
