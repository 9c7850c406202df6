"""What is one for the whole fleet, kept in the store so that every gateway
sharing it agrees: the admin token, the CA (with a shared store) and the join
tokens (``_join.TokenStore``).

The keys live under ``edgeflock.io/``, which is not an API resource
(``edgeproto.RESOURCES``): the API never lists or serves them, and
``edgeproto.owner_node`` places them on no node, so no node's view holds them.
Each is created once with ``create`` (a racing gateway's create loses with
``AlreadyExists`` and reads the winner's value).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeio import write_atomic

from ._backends import open_backend
from ._errors import GatewayError
from ._pki import GatewayPki, load_or_create_pki, new_ca, read_local_ca
from ._store import AlreadyExists, NotFound, Record, Store

log = logging.getLogger(__name__)

__all__ = [
    "ADMIN_TOKEN_KEY",
    "FLEET_CA_KEY",
    "JOIN_TOKENS",
    "fleet_ca",
    "join_token_key",
    "load_admin_token",
    "load_pki",
    "read_fleet_credentials",
]

ADMIN_TOKEN_KEY = "edgeflock.io/fleet/admin-token"
FLEET_CA_KEY = "edgeflock.io/fleet/ca"
JOIN_TOKENS = "edgeflock.io/jointokens/"  # + the token's id


def join_token_key(token_id: str) -> str:
    return JOIN_TOKENS + token_id


async def create_once(store: Store, key: str, make: Callable[[], dict[str, Any]]) -> Record:
    """``key``'s record, created with ``make()`` if absent; of gateways racing
    to create it, one wins and the others read its value."""
    try:
        return await store.get(key)
    except NotFound:
        pass
    try:
        return (await store.create(key, make())).record
    except AlreadyExists:
        return await store.get(key)


def _text(rec: Record, field: str) -> str:
    value = rec.value.get(field)
    if not isinstance(value, str) or not value.strip():
        raise GatewayError(f"the store's {rec.key} has no {field}: it is damaged")
    return value


async def load_admin_token(store: Store, data_dir: Path) -> str:
    """The fleet's admin bearer token, written to ``data_dir/admin.token`` (0600).

    Created once per store: from the data dir's ``admin.token`` if it has one
    (a gateway that ran before keeps its token), else at random."""
    path = data_dir / "admin.token"
    try:
        local = path.read_text().strip()
    except FileNotFoundError:
        local = ""
    # Hex, not base64url: a token starting with "-" reads as an option to
    # edgectl's and kubectl's argument parsers ("--token -x...").
    rec = await create_once(
        store,
        ADMIN_TOKEN_KEY,
        lambda: {"kind": "AdminToken", "token": local or secrets.token_hex(32)},
    )
    token = _text(rec, "token").strip()
    if token != local:
        if local:
            log.warning("%s held another token than the fleet's: replaced", path)
        write_atomic(path, (token + "\n").encode(), 0o600)
    return token


async def fleet_ca(store: Store, data_dir: Path) -> tuple[bytes, bytes]:
    """The fleet CA's certificate and key (PEM), created once per store: from
    the data dir's own CA if it has one (its boards stay trusted), else new."""

    def make() -> dict[str, Any]:
        cert, key = read_local_ca(data_dir) or new_ca()
        return {"kind": "FleetCA", "certificate": cert.decode(), "key": key.decode()}

    rec = await create_once(store, FLEET_CA_KEY, make)
    return _text(rec, "certificate").encode(), _text(rec, "key").encode()


async def load_pki(
    store: Store, data_dir: Path, *, sans: tuple[str, ...] = (), shared: bool
) -> GatewayPki:
    """The gateway's PKI: with a ``shared`` store the fleet CA from the store,
    else the data dir's own CA; the serving certificate in the data dir either way."""
    ca = await fleet_ca(store, data_dir) if shared else None
    return load_or_create_pki(data_dir, sans=sans, ca=ca)


async def read_fleet_credentials(data_dir: Path, store_url: str) -> tuple[bytes, str]:
    """The fleet CA's certificate and the admin token, as a gateway stored them
    in the store ``store_url`` names (for ``cloudgateway kubeconfig``)."""
    backend = open_backend(data_dir, store_url)
    try:
        store = Store(backend)
        ca = await store.get(FLEET_CA_KEY)
        token = await store.get(ADMIN_TOKEN_KEY)
    except NotFound as exc:
        raise GatewayError(f"the store has no {exc.key}: start a gateway on it first") from exc
    finally:
        backend.close()
    return _text(ca, "certificate").encode(), _text(token, "token").strip()
