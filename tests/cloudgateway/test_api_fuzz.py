"""Garbage in the request target and headers (issue 11, defect 18): a clear
4xx with a Status body, never a 500. Requests are parsed by h11 and
``_http._request`` as on the wire, then answered by a real ApiServer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgeproto
from cloudgateway._api import ApiServer
from cloudgateway._http import _request
from cloudgateway._store import SqliteBackend, Store

TOKEN = "fuzz-token"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ApiServer]:
    backend = SqliteBackend(str(tmp_path / "store.db"), node_of=edgeproto.owner_node)
    try:
        yield ApiServer(Store(backend), admin_token=TOKEN)
    finally:
        backend.close()


def answer(
    server: ApiServer, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[int, dict[str, object]] | None:
    """Parse a request as h11 would off the wire and answer it; None if h11
    itself refuses it (the HTTP layer answers those with a 400)."""
    conn = h11.Connection(h11.SERVER)
    head = method + b" " + target + b" HTTP/1.1\r\nhost: x\r\n"
    head += b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    conn.receive_data(head + b"authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    assert isinstance(event, h11.Request)
    resp = trio.run(server.handle, _request(event, b"", "fuzz"))
    return resp.status, json.loads(resp.body) if resp.body.startswith(b"{") else {}


@pytest.mark.parametrize(
    "target",
    [
        b"/api/v1/namespaces/default/pods/a%00b",
        b"/api/v1/nodes/%00",
        b"/api/v1/namespaces/%00/configmaps",
        b"/api/v1/nodes/a%ffb",
        b"/api/v1/nodes/x%0ay",
        b"/api/v1/nodes?labelSelector=a%00",
        b"/api/v1/nodes?fieldSelector=%00",
    ],
)
def test_nul_and_invalid_bytes_in_the_path_are_a_400(server: ApiServer, target: bytes) -> None:
    got = answer(server, b"GET", target, [])
    assert got is not None
    status, body = got
    assert status == 400, (target, body)
    assert body["kind"] == "Status" and body["code"] == 400


_SEGMENT = st.one_of(
    st.sampled_from(
        [
            "api",
            "apis",
            "v1",
            "nodes",
            "pods",
            "namespaces",
            "default",
            "status",
            "revocation",
            "log",
            "exec",
            "%00",
            "%ff",
            "%2F",
            "..",
            "",
        ]
    ),
    st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#"), max_size=8
    ),
)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from([b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"BREW"]),
    segments=st.lists(_SEGMENT, max_size=7),
    query=st.binary(max_size=40).map(
        lambda b: b.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"")
    ),
    headers=st.lists(
        st.tuples(
            st.sampled_from([b"accept", b"content-type", b"x-junk", b"authorization2"]),
            st.binary(max_size=30).filter(lambda v: b"\r" not in v and b"\n" not in v),
        ),
        max_size=3,
    ),
)
def test_garbage_requests_never_answer_500(
    server: ApiServer,
    method: bytes,
    segments: list[str],
    query: bytes,
    headers: list[tuple[bytes, bytes]],
) -> None:
    target = ("/" + "/".join(segments)).encode() + (b"?" + query if query else b"")
    got = answer(server, method, target, headers)
    if got is None:
        return  # refused by h11: the HTTP layer's 400
    status, body = got
    assert status < 500, (target, body)
