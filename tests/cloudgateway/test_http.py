"""The h11 + trio HTTP server over real loopback sockets (and real TLS).

Also home of a small async HTTP client (``Client``, ``fetch``) the API tests use.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from cloudgateway._http import HttpConfig, Request, Response, json_response, serve_http
from cloudgateway._pki import load_or_create_pki, server_ssl_context

GUARD = 10  # seconds: a guard against hangs, never an assertion about speed


# ---- a small real HTTP client -----------------------------------------------------------


class Client:
    """One HTTP/1.1 connection driven by h11: requests, keep-alive, streamed bodies."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int, *, ssl_context: ssl.SSLContext | None = None) -> Client:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        if ssl_context is None:
            return cls(tcp)
        tls = trio.SSLStream(tcp, ssl_context, server_hostname="localhost")
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        return cls(tls)

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def send_request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        hs = [("host", "127.0.0.1"), *(headers or [])]
        if body or method in ("POST", "PUT", "PATCH"):
            hs.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=path, headers=hs))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    async def next_event(self) -> Any:
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
                continue
            return ev

    async def read_head(self) -> h11.Response:
        while True:
            ev = await self.next_event()
            if isinstance(ev, h11.Response):
                return ev
            assert isinstance(ev, h11.InformationalResponse), ev

    async def read_chunk(self) -> bytes | None:
        """The next body chunk, or None at the end of the body."""
        ev = await self.next_event()
        if isinstance(ev, h11.Data):
            return bytes(ev.data)
        assert isinstance(ev, h11.EndOfMessage), ev
        return None

    async def read_body(self) -> bytes:
        out = bytearray()
        while (chunk := await self.read_chunk()) is not None:
            out += chunk
        return bytes(out)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        await self.send_request(method, path, body, headers)
        head = await self.read_head()
        hs = {k.decode().lower(): v.decode() for k, v in head.headers}
        return head.status_code, hs, await self.read_body()


async def fetch(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection."""
    with trio.fail_after(GUARD):
        client = await Client.connect(port, ssl_context=ssl_context)
        try:
            return await client.request(method, path, body, headers)
        finally:
            await client.aclose()


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    with trio.fail_after(GUARD):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            await stream.send_all(data)
            out = bytearray()
            while chunk := await stream.receive_some(65536):
                out += chunk
            return bytes(out)
        finally:
            await stream.aclose()


# ---- fixtures -----------------------------------------------------------------------


async def echo(request: Request) -> Response:
    if request.path == "/crash":
        raise RuntimeError("boom")
    if request.path == "/not-a-response":
        return "oops"  # type: ignore[return-value]
    if request.path == "/bad-header":
        return Response(200, b"x", [("x-bad", "caf\u00e9\u2603")])
    return json_response(
        200,
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "body": request.body.decode("latin-1"),
            "peer": request.peer,
        },
    )


async def start(
    nursery: trio.Nursery,
    handler: Callable[[Request], Any] = echo,
    ssl_context: ssl.SSLContext | None = None,
    **kw: Any,
) -> int:
    config = HttpConfig(host="127.0.0.1", port=0, **kw)
    port: int = await nursery.start(
        lambda task_status: serve_http(
            handler, config, ssl_context=ssl_context, task_status=task_status
        )
    )
    return port


# ---- tests --------------------------------------------------------------------------


async def test_request_fields_and_port_zero(nursery: trio.Nursery) -> None:
    port = await start(nursery)
    assert port > 0
    status, headers, body = await fetch(
        port,
        "POST",
        "/api/v1/name%20with%20space?a=1&a=2&empty=&x=%2F",
        b"hello",
        [("X-Custom", "Value")],
    )
    assert status == 200 and headers["content-type"] == "application/json"
    got = json.loads(body)
    assert got["method"] == "POST"
    assert got["path"] == "/api/v1/name with space"
    assert got["query"] == {"a": ["1", "2"], "empty": [""], "x": ["/"]}
    assert got["headers"]["x-custom"] == "Value"
    assert got["body"] == "hello"
    assert got["peer"].startswith("127.0.0.1:")


async def test_keep_alive_serves_several_requests_on_one_connection(
    nursery: trio.Nursery,
) -> None:
    port = await start(nursery)
    with trio.fail_after(GUARD):
        client = await Client.connect(port)
        peers = set()
        for i in range(3):
            status, _, body = await client.request("GET", f"/n/{i}")
            assert status == 200
            assert json.loads(body)["path"] == f"/n/{i}"
            peers.add(json.loads(body)["peer"])
        await client.aclose()
    assert len(peers) == 1  # the same client socket every time


async def test_handler_crash_is_a_500_and_the_server_keeps_serving(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    port = await start(nursery)
    with trio.fail_after(GUARD):
        client = await Client.connect(port)
        status, _, body = await client.request("GET", "/crash")
        assert status == 500
        err = json.loads(body)
        assert err["kind"] == "Status" and err["reason"] == "InternalError" and err["code"] == 500
        # The same connection is still usable, and so is the server.
        status, _, _ = await client.request("GET", "/fine")
        assert status == 200
        await client.aclose()
    assert any("handler failed" in r.getMessage() for r in caplog.records)
    status, _, body = await fetch(port, "GET", "/not-a-response")
    assert status == 500 and json.loads(body)["reason"] == "InternalError"
    status, _, _ = await fetch(port, "GET", "/bad-header")
    assert status == 500
    status, _, _ = await fetch(port, "GET", "/still-up")
    assert status == 200


@pytest.mark.parametrize(
    "garbage",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"\x00\x01\x02\xff\r\n\r\n",
    ],
)
async def test_malformed_http_is_a_400_and_closes(nursery: trio.Nursery, garbage: bytes) -> None:
    port = await start(nursery)
    answer = await raw_exchange(port, garbage)
    # 400, or 501 for a transfer coding HTTP/1.1 servers need not support.
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 501")), answer
    status = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert status["kind"] == "Status" and status["reason"] in ("BadRequest", "NotImplemented")
    status, _, _ = await fetch(port, "GET", "/after")
    assert status == 200


async def test_oversized_headers_are_refused(nursery: trio.Nursery) -> None:
    port = await start(nursery)
    answer = await raw_exchange(
        port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


async def test_body_over_the_limit_is_a_413(nursery: trio.Nursery) -> None:
    port = await start(nursery, max_body=1000)
    status, _, body = await fetch(port, "POST", "/x", b"y" * 1000)
    assert status == 200 and len(json.loads(body)["body"]) == 1000
    # Declared too large: refused from the headers alone.
    answer = await raw_exchange(
        port, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 413")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["reason"] == "RequestEntityTooLarge"
    # Chunked, growing past the limit.
    chunked = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"".join(b"200\r\n" + b"z" * 0x200 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    answer = await raw_exchange(port, chunked)
    assert answer.startswith(b"HTTP/1.1 413")


async def test_slow_and_silent_clients_time_out(nursery: trio.Nursery) -> None:
    port = await start(nursery, head_timeout=0.3, idle_timeout=0.3)
    with trio.fail_after(GUARD):
        # Half a request line, then nothing: 408 and the connection closes.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /slow HTT")
        out = bytearray()
        while chunk := await stream.receive_some(65536):
            out += chunk
        assert out.startswith(b"HTTP/1.1 408")
        await stream.aclose()
        # Connected and silent: closed without an answer.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert await stream.receive_some(65536) == b""
        await stream.aclose()
    status, _, _ = await fetch(port, "GET", "/after")
    assert status == 200


async def test_head_has_no_body_and_100_continue_is_answered(nursery: trio.Nursery) -> None:
    port = await start(nursery)
    status, headers, body = await fetch(port, "HEAD", "/h")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    with trio.fail_after(GUARD):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        first = await stream.receive_some(65536)
        assert first.startswith(b"HTTP/1.1 100")
        await stream.send_all(b"abc")
        rest = first.split(b"\r\n\r\n", 1)[1]
        while b'"body":"abc"' not in rest:
            rest += await stream.receive_some(65536)
        assert rest.startswith(b"HTTP/1.1 200")
        await stream.aclose()


async def test_streamed_response_is_chunked_and_closed_when_the_client_leaves(
    nursery: trio.Nursery,
) -> None:
    closed = trio.Event()
    served: list[str] = []

    class Feed:
        def __init__(self, n: int | None) -> None:
            self.n = n
            self.i = 0

        def __aiter__(self) -> Feed:
            return self

        async def __anext__(self) -> bytes:
            if self.n is not None and self.i >= self.n:
                raise StopAsyncIteration
            if self.n is None and self.i >= 2:
                await trio.sleep_forever()  # an idle watch
            self.i += 1
            return f"line {self.i}\n".encode()

        async def aclose(self) -> None:
            closed.set()

    async def handler(request: Request) -> Response:
        served.append(request.path)
        if request.path == "/crash-mid-stream":

            async def broken() -> AsyncIterator[bytes]:
                yield b"first\n"
                raise RuntimeError("stream broke")

            return Response(200, stream=broken())
        n = None if request.path == "/forever" else 3
        return Response(200, headers=[("content-type", "text/plain")], stream=Feed(n))

    port = await start(nursery, handler)
    # A finite stream: every chunk, then the end of the body.
    status, headers, body = await fetch(port, "GET", "/three")
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert body == b"line 1\nline 2\nline 3\n"
    await closed.wait()
    # An endless one: the client reads a little and hangs up; the server closes
    # the iterator instead of waiting for its next chunk forever.
    closed = trio.Event()
    with trio.fail_after(GUARD):
        client = await Client.connect(port)
        await client.send_request("GET", "/forever")
        await client.read_head()
        got = b""
        while got.count(b"\n") < 2:
            got += await client.read_chunk() or b""
        await client.aclose()
        await closed.wait()
    # A stream that raises half-way: the connection is cut, the server lives on.
    answer = await raw_exchange(port, b"GET /crash-mid-stream HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and b"first" in answer
    assert not answer.endswith(b"0\r\n\r\n")  # no clean end of the chunked body
    status, _, _ = await fetch(port, "GET", "/three")
    assert status == 200
    # HEAD: the headers only; the stream is closed unread.
    closed = trio.Event()
    status, _, body = await fetch(port, "HEAD", "/forever")
    assert status == 200 and body == b""
    await closed.wait()


async def _closed_by_server(stream: trio.SocketStream) -> bool:
    try:
        return await stream.receive_some(65536) == b""
    except trio.BrokenResourceError:
        return True  # reset instead of a clean close: closed all the same


async def test_at_the_cap_the_longest_waiting_connection_makes_room(
    nursery: trio.Nursery,
) -> None:
    entered, release = trio.Event(), trio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/wait":
            entered.set()
            await release.wait()
        return await echo(request)

    port = await start(nursery, handler, max_connections=2)
    with trio.fail_after(GUARD):
        busy = await Client.connect(port)
        async with trio.open_nursery() as n:
            n.start_soon(busy.request, "GET", "/wait")  # being answered: never shed
            await entered.wait()
            idle = await trio.open_tcp_stream("127.0.0.1", port)  # silent
            # A third connection takes the silent one's place and is served.
            newcomer = await Client.connect(port)
            status, _, _ = await newcomer.request("GET", "/new")
            assert status == 200
            assert await _closed_by_server(idle)
            await idle.aclose()
            # Between keep-alive requests a connection waits too: the oldest
            # such goes next.
            another = await Client.connect(port)
            status, _, _ = await another.request("GET", "/another")
            assert status == 200
            assert await _closed_by_server(newcomer.stream)
            await newcomer.aclose()
            release.set()
        await busy.aclose()
        await another.aclose()


async def test_when_every_connection_is_busy_a_new_one_is_refused(
    nursery: trio.Nursery,
) -> None:
    entered, release = trio.Event(), trio.Event()

    async def handler(request: Request) -> Response:
        entered.set()
        await release.wait()
        return await echo(request)

    port = await start(nursery, handler, max_connections=1)
    with trio.fail_after(GUARD):
        busy = await Client.connect(port)
        async with trio.open_nursery() as n:
            n.start_soon(busy.request, "GET", "/wait")
            await entered.wait()
            second = await trio.open_tcp_stream("127.0.0.1", port)
            await second.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await _closed_by_server(second)
            await second.aclose()
            release.set()
        await busy.aclose()
    status, _, _ = await fetch(port, "GET", "/again")
    assert status == 200


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    pki = load_or_create_pki(tmp_path / "pki")
    server = server_ssl_context(pki, require_client_cert=False)
    client = ssl.create_default_context(cadata=pki.ca_cert_pem.decode())
    return server, client


async def test_tls_serving_and_failed_handshakes(
    nursery: trio.Nursery, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, client_ctx = tls
    port = await start(nursery, ssl_context=server_ctx)
    status, _, body = await fetch(port, "GET", "/secure", ssl_context=client_ctx)
    assert status == 200 and json.loads(body)["path"] == "/secure"
    # Plain HTTP to the TLS port: the handshake fails, the connection is dropped.
    answer = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not answer.startswith(b"HTTP/")
    # A client that does not trust the server's CA gives up; the server goes on.
    with pytest.raises(trio.BrokenResourceError):
        await fetch(port, "GET", "/", ssl_context=ssl.create_default_context())
    status, _, _ = await fetch(port, "GET", "/again", ssl_context=client_ctx)
    assert status == 200
