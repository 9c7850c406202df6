"""A blocking etcd v3 client on grpcio, for the gateway's etcd backend and
replica coordination.

Why grpcio with checked-in messages (``_rpc.proto`` → ``_rpc_pb2.py``) rather
than etcd's JSON gateway: grpcio is already a dependency (edged's CRI), the
watch is a real bidirectional stream (progress requests, cancel) instead of a
long-polled chunked response, and messages are decoded by protobuf rather than
by hand from base64 JSON. Calls are blocking; callers run them in worker
threads (``Store`` does; coordination uses ``trio.to_thread``).

One channel per member. A call goes to the member that answered last; when it
is unreachable the call moves on to the next member. Reads (and anything
idempotent) are retried on every member before failing; a write whose fate is
unknown (the connection failed while it was in flight) is not retried: it
fails with ``EtcdUnavailable`` and the caller answers "retry" — never an
acknowledgement of what might not be committed. Every call has a deadline.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from . import _rpc_pb2

pb: Any = _rpc_pb2  # protobuf builds the message classes at import: no static types

log = logging.getLogger(__name__)

__all__ = [
    "EtcdClient",
    "EtcdCompacted",
    "EtcdError",
    "EtcdFutureRevision",
    "EtcdTls",
    "EtcdUnavailable",
    "Watch",
    "parse_endpoints",
    "pb",
    "prefix_end",
]


class EtcdError(Exception):
    """A call etcd refused (``code`` is the gRPC status name)."""

    def __init__(self, method: str, code: str, details: str) -> None:
        super().__init__(f"etcd {method}: {code}: {details}")
        self.method = method
        self.code = code
        self.details = details


class EtcdUnavailable(EtcdError):
    """No member could do it now (unreachable, no leader, overloaded, deadline);
    the same call may succeed later. For a write, its fate is unknown."""


class EtcdCompacted(EtcdError):
    """The revision asked for is below etcd's compaction horizon."""


class EtcdFutureRevision(EtcdError):
    """The revision asked for is above etcd's current revision."""


_TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "CANCELLED"}
# etcd answers these with UNKNOWN or FAILED_PRECONDITION while a member has no leader
_TRANSIENT_TEXT = ("leader changed", "no leader", "timed out", "too many requests", "not capable")


@dataclass(frozen=True, slots=True)
class EtcdTls:
    """Client TLS for etcd: the CA that signs the members' certificates, and an
    optional client certificate and key (etcd's --client-cert-auth)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


def parse_endpoints(text: str) -> list[str]:
    """``HOST:PORT[,HOST:PORT...]`` (an ``etcd://`` prefix allowed) as a list;
    ``ValueError`` naming what is wrong."""
    body = text.removeprefix("etcd://").strip().rstrip("/")
    if not body:
        raise ValueError("no etcd endpoint given (etcd://HOST:PORT[,HOST:PORT...])")
    out: list[str] = []
    for part in body.split(","):
        part = part.strip()
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"etcd endpoint {part!r} is not HOST:PORT")
        if "/" in host or "@" in host:
            raise ValueError(f"etcd endpoint {part!r} is not HOST:PORT")
        out.append(part)
    return out


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\x00"  # every key


_METHODS: dict[str, tuple[str, Any]] = {
    "Range": ("KV", pb.RangeResponse),
    "Put": ("KV", pb.PutResponse),
    "DeleteRange": ("KV", pb.DeleteRangeResponse),
    "Txn": ("KV", pb.TxnResponse),
    "Compact": ("KV", pb.CompactionResponse),
    "LeaseGrant": ("Lease", pb.LeaseGrantResponse),
    "LeaseRevoke": ("Lease", pb.LeaseRevokeResponse),
    "LeaseTimeToLive": ("Lease", pb.LeaseTimeToLiveResponse),
    "Status": ("Maintenance", pb.StatusResponse),
    "MemberList": ("Cluster", pb.MemberListResponse),
}
# Calls that change nothing, or that change nothing twice: retried on another member.
_IDEMPOTENT = {"Range", "LeaseTimeToLive", "Status", "MemberList", "LeaseRevoke", "Compact"}


class EtcdClient:
    """Blocking calls to an etcd cluster; thread-safe."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        tls: EtcdTls | None = None,
        timeout: float = 5.0,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint given")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._tls = tls
        self._creds = tls.credentials() if tls else None
        self._lock = threading.Lock()
        self._channels: list[grpc.Channel | None] = [None] * len(self.endpoints)
        self._current = 0
        self._closed = False
        self.calls = 0
        self.failovers = 0

    def __repr__(self) -> str:
        return f"EtcdClient({','.join(self.endpoints)})"

    # ---- channels

    def _channel(self, i: int) -> grpc.Channel:
        with self._lock:
            if self._closed:
                raise EtcdUnavailable("call", "CANCELLED", "client is closed")
            ch = self._channels[i]
            if ch is None:
                options = [
                    ("grpc.max_receive_message_length", 64 << 20),
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                    ("grpc.keepalive_time_ms", 10_000),
                    ("grpc.keepalive_timeout_ms", 5_000),
                ]
                target = self.endpoints[i]
                if self._creds is not None:
                    ch = grpc.secure_channel(target, self._creds, options=options)
                else:
                    ch = grpc.insecure_channel(target, options=options)
                self._channels[i] = ch
            return ch

    def _order(self) -> list[int]:
        n = len(self.endpoints)
        start = self._current
        return [(start + k) % n for k in range(n)]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._channels = self._channels, [None] * len(self.endpoints)
        for ch in channels:
            if ch is not None:
                ch.close()

    # ---- calls

    def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        """One unary call; on an unreachable member, the next one (every member
        for idempotent calls, else only while nothing can have been sent)."""
        service, response = _METHODS[method]
        path = f"/etcdserverpb.{service}/{method}"
        deadline = self.timeout if timeout is None else timeout
        last: EtcdError | None = None
        for i in self._order():
            stub = self._channel(i).unary_unary(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response.FromString,
            )
            self.calls += 1
            try:
                result = stub(request, timeout=deadline, wait_for_ready=False)
            except grpc.RpcError as exc:
                err = _error(method, exc)
                if not isinstance(err, EtcdUnavailable):
                    raise err from None
                last = err
                if method not in _IDEMPOTENT and not _not_sent(exc):
                    raise err from None
                self._failover(i, err)
                continue
            self._current = i
            return result
        assert last is not None
        raise last

    def _failover(self, i: int, err: EtcdError) -> None:
        if self._current == i:
            self._current = (i + 1) % len(self.endpoints)
            self.failovers += 1
            log.info("etcd member %s: %s; trying the next member", self.endpoints[i], err)

    # ---- KV helpers

    def range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
    ) -> Any:
        return self.call(
            "Range",
            pb.RangeRequest(
                key=key,
                range_end=range_end,
                revision=revision,
                limit=limit,
                keys_only=keys_only,
                count_only=count_only,
            ),
        )

    def txn(
        self,
        compare: Sequence[Any] = (),
        success: Sequence[Any] = (),
        failure: Sequence[Any] = (),
    ) -> Any:
        return self.call("Txn", pb.TxnRequest(compare=compare, success=success, failure=failure))

    def status(self, endpoint: int | None = None) -> Any:
        """The status of one member (``endpoint`` index) or of whichever answers."""
        if endpoint is None:
            return self.call("Status", pb.StatusRequest())
        stub = self._channel(endpoint).unary_unary(
            "/etcdserverpb.Maintenance/Status",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.StatusResponse.FromString,
        )
        try:
            return stub(pb.StatusRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise _error("Status", exc) from None

    # ---- leases

    def lease_grant(self, ttl: int) -> int:
        resp = self.call("LeaseGrant", pb.LeaseGrantRequest(TTL=ttl))
        if resp.error:
            raise EtcdError("LeaseGrant", "UNKNOWN", resp.error)
        return int(resp.ID)

    def lease_revoke(self, lease: int) -> None:
        try:
            self.call("LeaseRevoke", pb.LeaseRevokeRequest(ID=lease))
        except EtcdError as exc:
            if "not found" not in exc.details:
                raise

    def lease_keepalive(self, lease: int) -> int:
        """Refresh ``lease`` once; its TTL now (0: it has expired)."""
        last: EtcdError | None = None
        for i in self._order():
            stub = self._channel(i).stream_stream(
                "/etcdserverpb.Lease/LeaseKeepAlive",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=pb.LeaseKeepAliveResponse.FromString,
            )
            self.calls += 1
            try:
                responses = stub(iter([pb.LeaseKeepAliveRequest(ID=lease)]), timeout=self.timeout)
                for resp in responses:
                    self._current = i
                    return int(resp.TTL)
                raise EtcdUnavailable("LeaseKeepAlive", "UNAVAILABLE", "no answer")
            except grpc.RpcError as exc:
                err = _error("LeaseKeepAlive", exc)
                if not isinstance(err, EtcdUnavailable):
                    raise err from None
                last = err
                self._failover(i, err)
        assert last is not None
        raise last

    # ---- watch

    def watch(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        start_revision: int = 0,
        prev_kv: bool = False,
        progress_notify: bool = False,
    ) -> Watch:
        """A watch on the current member; iterate ``Watch.responses()`` in a
        thread. A member dying ends the iteration with ``EtcdUnavailable``: open
        a new watch from the last revision seen."""
        for i in self._order():
            create = pb.WatchCreateRequest(
                key=key,
                range_end=range_end,
                start_revision=start_revision,
                prev_kv=prev_kv,
                progress_notify=progress_notify,
            )
            w = Watch(self._channel(i), pb.WatchRequest(create_request=create), self.endpoints[i])
            try:
                w.wait_created(self.timeout)
            except EtcdUnavailable as err:
                w.cancel()
                self._failover(i, err)
                continue
            self._current = i
            return w
        raise EtcdUnavailable("Watch", "UNAVAILABLE", "no etcd member accepted a watch")


class Watch:
    """One watch stream: ``responses()`` yields ``WatchResponse`` messages
    (events and progress notifications); ``request_progress()`` asks the member
    for one now; ``cancel()`` ends it from any thread."""

    def __init__(self, channel: grpc.Channel, create: Any, endpoint: str) -> None:
        self.endpoint = endpoint
        self._requests: queue.Queue[Any] = queue.Queue()
        self._requests.put(create)
        self._closed = threading.Event()
        stub = channel.stream_stream(
            "/etcdserverpb.Watch/Watch",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.WatchResponse.FromString,
        )
        self._call = stub(self._request_iter())
        self._first: Any = None

    def _request_iter(self) -> Iterator[Any]:
        while True:
            req = self._requests.get()
            if req is None:
                return
            yield req

    def wait_created(self, timeout: float) -> None:
        box: list[Any] = []

        def first() -> None:
            with contextlib.suppress(grpc.RpcError, StopIteration):
                box.append(next(self._call))

        t = threading.Thread(target=first, daemon=True)
        t.start()
        t.join(timeout)
        if not box:
            raise EtcdUnavailable("Watch", "UNAVAILABLE", f"member {self.endpoint} did not answer")
        resp = box[0]
        if resp.canceled:
            raise _watch_canceled(resp)
        self._first = resp

    def request_progress(self) -> None:
        if not self._closed.is_set():
            self._requests.put(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    def cancel(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._requests.put(None)
            self._call.cancel()

    def responses(self) -> Iterator[Any]:
        """Responses after the creation answer; ends only by ``cancel`` (returns)
        or by an error (``EtcdCompacted`` when the start revision was compacted,
        ``EtcdUnavailable`` when the member went away)."""
        try:
            for resp in self._call:
                if resp.canceled:
                    raise _watch_canceled(resp)
                yield resp
        except grpc.RpcError as exc:
            if self._closed.is_set():
                return
            raise _error("Watch", exc) from None
        if not self._closed.is_set():
            raise EtcdUnavailable("Watch", "UNAVAILABLE", f"member {self.endpoint} ended the watch")


def _watch_canceled(resp: Any) -> EtcdError:
    if resp.compact_revision:
        return EtcdCompacted(
            "Watch", "OUT_OF_RANGE", f"compacted at revision {resp.compact_revision}"
        )
    return EtcdUnavailable("Watch", "CANCELLED", resp.cancel_reason or "watch canceled")


def _not_sent(exc: grpc.RpcError) -> bool:
    """True when the call cannot have reached a member (the channel never connected)."""
    details = (exc.details() or "") if hasattr(exc, "details") else ""
    return "failed to connect" in details.lower() or "connection refused" in details.lower()


def _error(method: str, exc: grpc.RpcError) -> EtcdError:
    code = exc.code() if hasattr(exc, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    low = details.lower()
    if "compacted" in low:
        return EtcdCompacted(method, name, details)
    if "future revision" in low:
        return EtcdFutureRevision(method, name, details)
    if name in _TRANSIENT or any(t in low for t in _TRANSIENT_TEXT):
        return EtcdUnavailable(method, name, details)
    return EtcdError(method, name, details)
