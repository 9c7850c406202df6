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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import apsw
import trio

from ._errors import GatewayError
from ._http import Request, Response, json_response
from ._pki import GatewayPki, PkiError, load_or_create_pki, sign_node_csr

log = logging.getLogger(__name__)

__all__ = ["JoinError", "JoinService", "TokenStore", "create_join_token"]

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
    """Join tokens in SQLite (``path``). ``clock`` is the wall clock that
    creation, expiry and use are measured with (tests move it by hand)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        try:
            self._conn = apsw.Connection(str(path))
            self._conn.setbusytimeout(5000)
            self._conn.execute("PRAGMA journal_mode=WAL")
            with self._conn:
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS tokens(id TEXT PRIMARY KEY, "
                    "secret_hash TEXT NOT NULL, node TEXT NOT NULL, created REAL NOT NULL, "
                    "expires REAL NOT NULL, used_at REAL)"
                )
        except apsw.Error as exc:
            raise JoinError("BadRequest", f"cannot open token store {path}: {exc}", 500) from exc

    def close(self) -> None:
        self._conn.close()

    def create(self, node: str, *, ttl: float = 3600.0) -> str:
        if not valid_node_name(node):
            raise JoinError(
                "BadRequest", f"invalid node name {node!r}: use a DNS-1123 subdomain", 400
            )
        if ttl <= 0:
            raise JoinError("BadRequest", "ttl must be positive", 400)
        tid = "".join(secrets.choice(_ALPHABET) for _ in range(6))
        secret = "".join(secrets.choice(_ALPHABET) for _ in range(16))
        now = self._clock()
        with self._conn:
            self._conn.execute(
                "INSERT INTO tokens(id, secret_hash, node, created, expires) VALUES(?, ?, ?, ?, ?)",
                (tid, _hash(secret), node, now, now + ttl),
            )
        return f"{tid}.{secret}"

    def consume(self, token: str, *, now: float | None = None) -> str:
        m = _TOKEN.match(token or "")
        if not m:
            raise JoinError("BadToken", "malformed token (expected <6 chars>.<16 chars>)")
        tid, secret = m.groups()
        now = self._clock() if now is None else now
        with self._conn:
            row = self._conn.execute(
                "SELECT secret_hash, node, expires, used_at FROM tokens WHERE id=?", (tid,)
            ).fetchone()
            if row is None or not hmac.compare_digest(str(row[0]), _hash(secret)):
                raise JoinError("UnknownToken", "unknown token")
            if row[3] is not None:
                raise JoinError("UsedToken", "token already used")
            if float(str(row[2])) <= now:
                raise JoinError("ExpiredToken", "token expired")
            self._conn.execute(
                "UPDATE tokens SET used_at=? WHERE id=? AND used_at IS NULL", (now, tid)
            )
            if self._conn.changes() != 1:
                raise JoinError("UsedToken", "token already used")
            node = str(row[1])
        return node

    def list(self) -> list[dict[str, Any]]:
        now = self._clock()
        return [
            {
                "id": r[0],
                "node": r[1],
                "expires": r[2],
                "state": "used" if r[3] else ("expired" if float(str(r[2])) <= now else "valid"),
            }
            for r in self._conn.execute(
                "SELECT id, node, expires, used_at FROM tokens ORDER BY created"
            )
        ]


def create_join_token(
    data_dir: Path, node: str, ttl: float, *, clock: Callable[[], float] = time.time
) -> str:
    """The full token a board joins with: ``<id>.<secret>.<ca-pin-hex>``
    (created at ``clock()``)."""
    pki = load_or_create_pki(data_dir)
    store = TokenStore(data_dir / "tokens.db", clock=clock)
    try:
        token = store.create(node, ttl=ttl)
    finally:
        store.close()
    return f"{token}.{pki.ca_pin.removeprefix('sha256:')}"


class JoinService:
    def __init__(
        self,
        pki: GatewayPki,
        tokens: TokenStore,
        *,
        hub_url: Callable[[Request], str],
        on_joined: Callable[[str], Awaitable[None]],
    ) -> None:
        self._pki = pki
        self._tokens = tokens
        self._hub_url = hub_url
        self._on_joined = on_joined
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
            token = body["token"]
            parts = token.split(".")
            if len(parts) == 3:  # tolerate the full printed token
                token = ".".join(parts[:2])
            csr = body["csr"].encode()
            node = await trio.to_thread.run_sync(
                self._consume_and_sign_check, token, csr, limiter=self._limiter
            )
            cert = await trio.to_thread.run_sync(
                sign_node_csr, self._pki, csr, node, limiter=self._limiter
            )
            await self._on_joined(node)
        except ValueError as exc:
            return self._fail(JoinError("BadRequest", f"malformed JSON: {exc}", 400), request)
        except PkiError as exc:
            return self._fail(JoinError("BadCSR", str(exc), 400), request)
        except JoinError as exc:
            return self._fail(exc, request)
        self.counters["joined"] += 1
        log.info("node %s joined from %s", node, request.peer)
        return json_response(
            200,
            {
                "node": node,
                "certificate": cert.decode(),
                "ca": self._pki.ca_cert_pem.decode(),
                "hub": self._hub_url(request),
            },
        )

    def _consume_and_sign_check(self, token: str, csr: bytes) -> str:
        # Check the CSR first so a bad CSR does not burn the token.
        from cryptography import x509

        try:
            parsed = x509.load_pem_x509_csr(csr)
        except ValueError as exc:
            raise PkiError(f"not a PEM certificate signing request: {exc}") from exc
        if not parsed.is_signature_valid:
            raise PkiError("the CSR's signature does not match its public key")
        return self._tokens.consume(token)

    def _fail(self, exc: JoinError, request: Request) -> Response:
        self.counters[f"rejected_{exc.reason}"] += 1
        log.warning("join from %s refused: %s", request.peer, exc)
        return _error(exc)


def _error(exc: JoinError) -> Response:
    return json_response(exc.http_status, {"reason": exc.reason, "message": str(exc)})
