"""Which store a gateway, or one of its CLI commands, opens: ``--store URL``.

- ``sqlite`` (the default): the embedded store, ``DATA_DIR/store.db``, on one
  machine. The fleet's CA stays in the data dir's files.
- ``etcd://HOST:PORT[,HOST:PORT...]``: the fleet's store on etcd v3, shared by
  every replica. Client TLS for etcd rides in the URL's query,
  ``?ca=FILE&cert=FILE&key=FILE`` (``--etcd-ca/--etcd-cert/--etcd-key`` add it).

A store other than the default is *shared*: the fleet's secrets (CA, admin
token) then live in it, not in any one data dir.
"""

from __future__ import annotations

import argparse
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

import edgeproto

from ._backend import Backend, StoreError
from ._sqlite import SqliteBackend

if TYPE_CHECKING:
    from .etcd._client import EtcdTls

__all__ = [
    "DEFAULT_STORE",
    "check_store_url",
    "etcd_parts",
    "etcd_store_url",
    "open_backend",
    "store_is_shared",
]

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
        from .etcd import open_etcd_backend

        endpoints, tls = etcd_parts(store_url)
        try:
            return open_etcd_backend(endpoints, tls=tls, node_of=edgeproto.owner_node)
        except (ValueError, OSError) as exc:
            raise StoreError(f"--store {store_url}: {exc}") from exc
    raise StoreError(f"unknown store {store_url!r}: {_HELP}")


def etcd_store_url(
    url: str, *, ca: str | None = None, cert: str | None = None, key: str | None = None
) -> str:
    """``url`` with etcd client TLS files added to its query (absolute paths)."""
    if not (ca or cert or key):
        return url
    if not url.startswith("etcd://"):
        raise StoreError("--etcd-ca/--etcd-cert/--etcd-key need --store etcd://...")
    if (cert is None) != (key is None):
        raise StoreError("--etcd-cert and --etcd-key go together")
    if ca is None:
        raise StoreError("--etcd-cert/--etcd-key need --etcd-ca (the CA of etcd's members)")
    query = {"ca": str(Path(ca).resolve())}
    if cert and key:
        query.update(cert=str(Path(cert).resolve()), key=str(Path(key).resolve()))
    base = url.split("?", 1)[0]
    return base + "?" + urllib.parse.urlencode(query)


def etcd_parts(store_url: str) -> tuple[str, EtcdTls | None]:
    """The endpoints part of an ``etcd://`` store URL and its client TLS, if any."""
    from .etcd._client import EtcdTls

    base, _, query = store_url.partition("?")
    params = urllib.parse.parse_qs(query, strict_parsing=False) if query else {}
    unknown = set(params) - {"ca", "cert", "key"}
    if unknown:
        raise StoreError(f"--store {base}: unknown option(s) {', '.join(sorted(unknown))}")
    files = {k: Path(v[-1]) for k, v in params.items()}
    for what, path in files.items():
        if not path.is_file():
            raise StoreError(f"--store {base}: etcd {what} file {path} does not exist")
    if not files:
        return base, None
    if "ca" not in files:
        raise StoreError(f"--store {base}: etcd TLS needs ca=")
    return base, EtcdTls(ca=files["ca"], cert=files.get("cert"), key=files.get("key"))
