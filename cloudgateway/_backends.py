"""Which store a gateway, or one of its CLI commands, opens: ``--store URL``.

- ``sqlite`` (the default): the embedded store, ``DATA_DIR/store.db``, on one
  machine. The fleet's CA stays in the data dir's files.
- ``etcd://HOST:PORT[,HOST:PORT...]``: the fleet's store shared by every
  replica (not built yet: refused with a clear error).

A store other than the default is *shared*: the fleet's secrets (CA, admin
token) then live in it, not in any one data dir.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import edgeproto

from ._backend import Backend, StoreError
from ._sqlite import SqliteBackend

__all__ = ["DEFAULT_STORE", "check_store_url", "open_backend", "store_is_shared"]

DEFAULT_STORE = "sqlite"

_HELP = "use 'sqlite' (the data dir's store.db) or etcd://HOST:PORT[,HOST:PORT...]"


def check_store_url(text: str) -> str:
    """``text`` if it names a store this gateway knows (argparse ``type``)."""
    if text == DEFAULT_STORE or text.startswith("etcd://"):
        return text
    raise argparse.ArgumentTypeError(f"unknown store {text!r}: {_HELP}")


def store_is_shared(store_url: str) -> bool:
    """True if other gateways may share the store (every store but the data dir's)."""
    return store_url != DEFAULT_STORE


def open_backend(data_dir: Path, store_url: str = DEFAULT_STORE) -> Backend:
    """The backend ``store_url`` names; the caller closes it."""
    if store_url == DEFAULT_STORE:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return SqliteBackend(str(data_dir / "store.db"), node_of=edgeproto.owner_node)
    if store_url.startswith("etcd://"):
        raise StoreError(f"--store {store_url}: the etcd backend is not built yet")
    raise StoreError(f"unknown store {store_url!r}: {_HELP}")
