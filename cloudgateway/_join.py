"""Enrollment: single-use, expiring join tokens that also pin the gateway CA
(kubeadm's bootstrap token + discovery hash), exchanged with a CSR for a node
certificate over HTTPS."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import string
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

import edgeproto
from edgeproto.labels import LabelError

from ._backends import DEFAULT_STORE, open_backend, store_is_shared
from ._errors import GatewayError
from ._fleet import JOIN_TOKENS, fleet_ca, join_token_key
from ._http import Request, Response, json_response
from ._nodes import NodeJoin, node_join_from_request
from ._pki import GatewayPki, PkiError, load_or_create_pki, sign_node_csr, spki_pin
from ._store import AlreadyExists, Conflict, NotFound, Store, StoreError, Unavailable

log = logging.getLogger(__name__)

__all__ = [
    "JoinError",
    "JoinService",
    "TokenStore",
    "create_join_token",
    "list_join_tokens",
]

_TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
_NODE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ALPHABET = string.ascii_lowercase + string.digits


class JoinError(GatewayError):
    def __init__(self, reason: str, message: str, http_status: int = 401) -> None:
        super().__init__(message)
        self.reason = reason
        self.http_status = http_status


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def valid_node_name(node: str) -> bool:
    return len(node) <= 253 and bool(_NODE.match(node))


class TokenStore:
    """Join tokens in the gateway's store (``edgeflock.io/jointokens/<id>``),
    shared by every gateway on it. The secret is kept hashed. ``clock`` is the
    wall clock that creation, expiry and use are measured with (tests move it
    by hand). A token is used by a write guarded on the revision it was read
    at, so of two joins racing with one token (on one gateway or two) exactly
    one wins. Tokens expired for ``keep_expired`` seconds are deleted when a
    token is created."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        keep_expired: float = 86400.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._keep_expired = keep_expired

    async def create(self, node: str, *, ttl: float = 3600.0) -> str:
        """A new token for ``node`` (``<id>.<secret>``), valid for ``ttl`` seconds."""
        if not valid_node_name(node):
            raise JoinError(
                "BadRequest", f"invalid node name {node!r}: use a DNS-1123 subdomain", 400
            )
        if ttl <= 0:
            raise JoinError("BadRequest", "ttl must be positive", 400)
        now = self._clock()
        await self.prune(now=now)
        secret = "".join(secrets.choice(_ALPHABET) for _ in range(16))
        for _ in range(5):  # a clash of random ids is rare; retry with another
            tid = "".join(secrets.choice(_ALPHABET) for _ in range(6))
            value = {
                "kind": "JoinToken",
                "node": node,
                "secretHash": _hash(secret),
                "created": now,
                "expires": now + ttl,
            }
            try:
                await self._store.create(join_token_key(tid), value)
            except AlreadyExists:
                continue
            return f"{tid}.{secret}"
        raise JoinError("Unavailable", "could not pick an unused token id; try again", 503)

    async def consume(self, token: str, *, now: float | None = None) -> str:
        """Use ``token`` once: the node it was made for, or ``JoinError``."""
        m = _TOKEN.match(token or "")
        if not m:
            raise JoinError("BadToken", "malformed token (expected <6 chars>.<16 chars>)")
        tid, secret = m.groups()
        now = self._clock() if now is None else now
        key = join_token_key(tid)
        try:
            try:
                rec = await self._store.get(key)
            except NotFound:
                raise JoinError("UnknownToken", "unknown token") from None
            t = rec.value
            if not hmac.compare_digest(str(t.get("secretHash")), _hash(secret)):
                raise JoinError("UnknownToken", "unknown token")
            if t.get("usedAt") is not None:
                raise JoinError("UsedToken", "token already used")
            if _number(t.get("expires")) <= now:
                raise JoinError("ExpiredToken", "token expired")
            try:
                await self._store.update(key, {**t, "usedAt": now}, expect_rev=rec.mod_rev)
            except (Conflict, NotFound):
                raise JoinError("UsedToken", "token already used (by a concurrent join)") from None
        except StoreError as exc:
            if isinstance(exc, Unavailable):  # the same join may succeed later
                raise JoinError(
                    "StoreUnavailable", f"cannot check the token now: {exc}", 503
                ) from exc
            raise JoinError("StoreError", f"cannot check the token: {exc}", 500) from exc
        return str(t.get("node"))

    async def list(self) -> list[dict[str, Any]]:
        now = self._clock()
        records, _ = await self._store.list(JOIN_TOKENS)
        tokens = sorted(records, key=lambda r: (_number(r.value.get("created")), r.create_rev))
        return [
            {
                "id": r.key.removeprefix(JOIN_TOKENS),
                "node": r.value.get("node"),
                "expires": r.value.get("expires"),
                "state": _state(r.value, now),
            }
            for r in tokens
        ]

    async def prune(self, *, now: float | None = None) -> int:
        """Delete the tokens expired ``keep_expired`` seconds ago or more (used
        or not); returns how many."""
        now = self._clock() if now is None else now
        records, _ = await self._store.list(JOIN_TOKENS)
        pruned = 0
        for r in records:
            if _number(r.value.get("expires")) + self._keep_expired <= now:
                try:
                    await self._store.delete(r.key, expect_rev=r.mod_rev)
                except (Conflict, NotFound):
                    continue  # used or pruned meanwhile by another gateway
                pruned += 1
        return pruned


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _state(token: dict[str, Any], now: float) -> str:
    if token.get("usedAt") is not None:
        return "used"
    return "expired" if _number(token.get("expires")) <= now else "valid"


async def create_join_token(
    data_dir: Path,
    node: str,
    ttl: float,
    *,
    store_url: str = DEFAULT_STORE,
    clock: Callable[[], float] = time.time,
) -> str:
    """The full token a board joins with: ``<id>.<secret>.<ca-pin-hex>``
    (created at ``clock()``), written to the store ``store_url`` names (which a
    running gateway may have open too) and pinning the fleet's CA."""
    backend = open_backend(data_dir, store_url)
    try:
        store = Store(backend)
        if store_is_shared(store_url):  # only the pin: no certificate in this data dir
            pin = spki_pin((await fleet_ca(store, data_dir))[0])
        else:
            pin = load_or_create_pki(data_dir).ca_pin
        token = await TokenStore(store, clock=clock).create(node, ttl=ttl)
    finally:
        backend.close()
    return f"{token}.{pin.removeprefix('sha256:')}"


async def list_join_tokens(data_dir: Path, store_url: str = DEFAULT_STORE) -> list[dict[str, Any]]:
    """The join tokens in the store ``store_url`` names, without their secrets."""
    backend = open_backend(data_dir, store_url)
    try:
        return await TokenStore(Store(backend)).list()
    finally:
        backend.close()


class JoinService:
    def __init__(
        self,
        pki: GatewayPki,
        tokens: TokenStore,
        *,
        hub_url: Callable[[Request], str],
        on_joined: Callable[[str, NodeJoin], Awaitable[bool]],
        hub_urls: Callable[[], Sequence[str]] | None = None,
        release_key: str | None = None,
    ) -> None:
        """``hub_url``: this gateway's hub, as the joining board reaches it;
        ``release_key``: the fleet's release public key (PEM text), sent as
        ``releaseKey`` (a board keeps the first it gets and never takes another);
        ``hub_urls``: every live replica's hub, sent beside it as ``hubs``;
        ``on_joined(node, join)``: writes the Node (True: created, False: it
        existed), after the token is spent; what the board asked for in
        ``join`` (labels, arch, os) was checked before."""
        self._pki = pki
        self._tokens = tokens
        self._hub_url = hub_url
        self._hub_urls = hub_urls
        self._on_joined = on_joined
        self._release_key = release_key
        self._limiter = trio.CapacityLimiter(1)
        self.counters: Counter[str] = Counter()

    def statistics(self) -> dict[str, int]:
        return dict(self.counters)

    async def handle(self, request: Request) -> Response:
        if request.path == "/v1/ca" and request.method == "GET":
            return json_response(200, {"ca": self._pki.ca_cert_pem.decode()})
        if request.path == "/healthz":
            return json_response(200, {"status": "ok"})
        if request.path != "/v1/join":
            return _error(JoinError("NotFound", f"no route {request.path}", 404))
        if request.method != "POST":
            return _error(JoinError("MethodNotAllowed", "use POST", 405))
        try:
            body = json.loads(request.body)
            if (
                not isinstance(body, dict)
                or not isinstance(body.get("token"), str)
                or not isinstance(body.get("csr"), str)
            ):
                raise JoinError("BadRequest", "expected JSON {token, csr}", 400)
            try:  # refused before the token is spent: the board fixes it and tries again
                asked = node_join_from_request(body)
            except LabelError as exc:
                raise JoinError("BadLabels", str(exc), 400) from None
            token = body["token"]
            parts = token.split(".")
            if len(parts) == 3:  # tolerate the full printed token
                token = ".".join(parts[:2])
            csr = body["csr"].encode()
            await trio.to_thread.run_sync(_check_csr, csr, limiter=self._limiter)
            node = await self._tokens.consume(token)
            cert = await trio.to_thread.run_sync(
                sign_node_csr, self._pki, csr, node, limiter=self._limiter
            )
            created = await self._on_joined(node, asked)
        except ValueError as exc:
            return self._fail(JoinError("BadRequest", f"malformed JSON: {exc}", 400), request)
        except PkiError as exc:
            return self._fail(JoinError("BadCSR", str(exc), 400), request)
        except JoinError as exc:
            return self._fail(exc, request)
        self.counters["joined"] += 1
        log.info("node %s joined from %s", node, request.peer)
        answer: dict[str, Any] = {
            "node": node,
            "certificate": cert.decode(),
            "ca": self._pki.ca_cert_pem.decode(),
            "hub": self._hub_url(request),
            "nodeCreated": created,  # False: a re-join, the Node's labels stay the cloud's
        }
        hubs = self._hubs()
        if hubs:
            answer["hubs"] = list(hubs)
        if self._release_key is not None:
            answer["releaseKey"] = self._release_key
        return json_response(200, answer)

    def _hubs(self) -> tuple[str, ...] | None:
        """Every live replica's hub URL, or None (left out: the board keeps
        the one hub) when there is no source or what it gives is not valid."""
        if self._hub_urls is None:
            return None
        try:
            urls = list(self._hub_urls())
            return edgeproto.check_hubs(urls) if urls else None
        except Exception as exc:  # a bad list must not cost a spent token its answer
            self.counters["hubs_not_sent"] += 1
            log.warning("not sending the replicas' hub URLs to a joining node: %s", exc)
            return None

    def _fail(self, exc: JoinError, request: Request) -> Response:
        self.counters[f"rejected_{exc.reason}"] += 1
        log.warning("join from %s refused: %s", request.peer, exc)
        return _error(exc)


def _check_csr(csr: bytes) -> None:
    """Refuse a bad CSR before the token is used, so it does not burn the token."""
    from cryptography import x509

    try:
        parsed = x509.load_pem_x509_csr(csr)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate signing request: {exc}") from exc
    if not parsed.is_signature_valid:
        raise PkiError("the CSR's signature does not match its public key")


def _error(exc: JoinError) -> Response:
    return json_response(exc.http_status, {"reason": exc.reason, "message": str(exc)})
