"""``HubClient.request`` and the release download (``_download``) over real
TLS WebSockets.

``request`` is checked against the real gateway (its ``get`` requests). The
release download runs against ``hub_standin.StandInHub``, a stand-in for the
gateway's release serving (built in parallel on branch ``otagw``) that speaks
the real protocol and can corrupt pieces, sign wrongly, answer 503 and drop
sessions: faults of a broken or hostile gateway."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from edgeagent._config import load_config
from edgeagent._download import Download, Permanent, Transient, fetch_release
from edgeagent._hub import HubClient
from edgeagent._meta import Meta
from edgeagent._requests import HubUnavailable, RequestError
from edgeagent._tls import client_ssl_context
from edgeproto.upgrade import CHUNK_SIZE, WINDOW, decode_assignment
from tests.conftest import Gateway, join_node, wait_for
from tests.edgeagent.hub_standin import (
    ServedRelease,
    StandInHub,
    assignment_of,
    keypair,
    make_release,
)


@dataclass
class Linked:
    hub: StandInHub
    client: HubClient
    meta: Meta
    data: Path
    release: ServedRelease
    public_key: bytes


class Connected:
    """A HubClient running in the test's nursery with its own store."""

    def __init__(self, nursery: trio.Nursery, data: Path) -> None:
        config = load_config(data, heartbeat=1.0, backoff_base=0.05, backoff_cap=0.2)
        self.meta = Meta(config.meta_path)
        self.client = HubClient(config, self.meta, lambda: client_ssl_context(data))
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()
        nursery.start_soon(self._run)

    async def _run(self) -> None:
        try:
            with self.scope:
                await self.client.run()
        finally:
            self.stopped.set()

    async def close(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()
        self.meta.close()


async def connect(nursery: trio.Nursery, data: Path) -> Connected:
    c = Connected(nursery, data)
    with trio.fail_after(10):
        await c.client.wait_connected()
    return c


@pytest.fixture
async def linked(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Linked]:
    private, public = keypair()
    release = make_release(tmp_path / "release.tar", 40 * CHUNK_SIZE + 123, private)
    hub = StandInHub(tmp_path / "gw", "pi-dl")
    hub.releases[release.manifest.sha256] = release
    hub.annotation = assignment_of(release)
    await hub.start(nursery)
    data = tmp_path / "agent"
    hub.enroll(data)
    c = await connect(nursery, data)
    yield Linked(hub, c.client, c.meta, data, release, public)
    hub.resume.set()
    await c.close()


# ---- HubClient.request ----------------------------------------------------------------


async def test_requests_are_pipelined_and_errors_come_back_as_exceptions(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path
) -> None:
    data = tmp_path / "agent"
    await join_node(gateway, "pi-req", data)
    c = await connect(nursery, data)
    client = c.client
    try:
        answers: list[dict[str, object]] = []

        async def get() -> None:
            answers.append(await client.request("get", "nodes//pi-req", timeout=10))

        async with trio.open_nursery() as n:
            for _ in range(8):
                n.start_soon(get)
        assert len(answers) == 8
        assert all(isinstance(a["object"], bytes) and a["rev"] for a in answers)
        assert client.statistics()["requests_in_flight"] == 0
        with pytest.raises(RequestError) as refused:
            await client.request("get", "nodes//someone-else", timeout=10)
        assert refused.value.code == 403
    finally:
        await c.close()


async def test_a_request_fails_at_once_without_a_session_and_when_it_drops(
    linked: Linked,
) -> None:
    sha = linked.release.manifest.sha256
    linked.hub.hold_after_chunks = 0  # the stand-in keeps every piece request waiting
    began = trio.current_time()
    async with trio.open_nursery() as n:

        async def drop_when_asked() -> None:
            await wait_for(lambda: linked.client.statistics()["requests_in_flight"] == 1)
            await linked.hub.drop()

        n.start_soon(drop_when_asked)
        with pytest.raises(HubUnavailable, match="session with the gateway ended"):
            await linked.client.request("release-chunk", sha, {"index": 0}, timeout=60)
    assert trio.current_time() - began < 10, "the request waited past the session's end"
    assert linked.client.statistics()["requests_in_flight"] == 0
    if not linked.client.connected:  # between sessions: refused at once, nothing sent
        with pytest.raises(HubUnavailable, match="not connected"):
            await linked.client.request("release-chunk", sha, {"index": 0}, timeout=60)
    linked.hub.resume.set()


# ---- the download -----------------------------------------------------------------------


def good_pieces(path: Path, release: ServedRelease) -> int:
    import hashlib

    good = 0
    with open(path, "rb") as f:
        for i, h in enumerate(release.manifest.chunks):
            f.seek(i * CHUNK_SIZE)
            if hashlib.sha256(f.read(CHUNK_SIZE)).hexdigest() == h:
                good += 1
    return good


async def test_a_release_downloads_verified_into_its_tar(linked: Linked) -> None:
    a = decode_assignment(linked.hub.annotation)
    rel = await fetch_release(linked.client.request, a, linked.public_key, wait=10)
    d = Download(rel, linked.data / "upgrade", linked.client.request)
    tar = await d.run()
    assert tar == linked.data / "upgrade" / f"{a.release}.tar"
    assert tar.read_bytes() == linked.release.path.read_bytes()
    assert not d.part.exists()
    n = len(linked.release.manifest.chunks)
    assert sorted(linked.hub.chunk_requests) == list(range(n))
    assert max(linked.hub.chunk_requests.values()) == 1


async def test_a_corrupted_piece_is_asked_for_again_once_then_fails(linked: Linked) -> None:
    a = decode_assignment(linked.hub.annotation)
    rel = await fetch_release(linked.client.request, a, linked.public_key, wait=10)
    linked.hub.corrupt[5] = 1  # once: the fresh copy is good
    d = Download(rel, linked.data / "upgrade", linked.client.request)
    await d.run()
    assert d.refetched == 1 and linked.hub.chunk_requests[5] == 2
    d.remove()

    linked.hub.corrupt[7] = 2  # twice: the gateway's copy is bad
    d = Download(rel, linked.data / "upgrade", linked.client.request)
    with pytest.raises(Permanent, match="piece 7 failed its SHA-256 check twice"):
        await d.run()


async def test_a_bad_signature_is_asked_for_again_once_then_fails(linked: Linked) -> None:
    a = decode_assignment(linked.hub.annotation)
    linked.hub.bad_signatures = 1
    await fetch_release(linked.client.request, a, linked.public_key, wait=10)
    assert linked.hub.manifest_requests == 2
    linked.hub.bad_signatures = 2
    with pytest.raises(Permanent, match="signature does not verify"):
        await fetch_release(linked.client.request, a, linked.public_key, wait=10)
    _, other = keypair()  # signed by a key this board does not trust
    with pytest.raises(Permanent, match="signature does not verify"):
        await fetch_release(linked.client.request, a, other, wait=10)
    assert linked.hub.chunk_requests == {}  # nothing of it was fetched


async def test_a_manifest_for_another_version_or_size_is_refused(linked: Linked) -> None:
    wrong = decode_assignment(assignment_of(linked.release, version="1.2.3"))
    with pytest.raises(Permanent, match=r"is version 9\.9\.9, the job asks for 1\.2\.3"):
        await fetch_release(linked.client.request, wrong, linked.public_key, wait=10)
    wrong = decode_assignment(assignment_of(linked.release, size=CHUNK_SIZE))
    with pytest.raises(Permanent, match="the assignment says"):
        await fetch_release(linked.client.request, wrong, linked.public_key, wait=10)


async def until_done(client: HubClient, d: Download) -> list[str]:
    """Run ``d`` to its end as the Upgrader does (waiting for a session after
    each transient error); the transient errors met."""
    troubles: list[str] = []
    while True:
        await client.wait_connected()
        try:
            await d.run()
            return troubles
        except Transient as exc:
            troubles.append(str(exc))


async def test_a_download_resumes_after_a_drop_and_after_a_restart(linked: Linked) -> None:
    a = decode_assignment(linked.hub.annotation)
    rel = await fetch_release(linked.client.request, a, linked.public_key, wait=10)
    n = rel.count
    linked.hub.drop_after_chunks = 12
    d = Download(rel, linked.data / "upgrade", linked.client.request)
    with pytest.raises(Transient):
        await d.run()
    kept = d.have
    assert 12 - WINDOW <= kept <= 12
    # A new process finds the .part: every piece in it that checks is kept.
    fresh = Download(rel, linked.data / "upgrade", linked.client.request)
    linked.hub.unavailable = 1  # one 503 on the way: transient
    troubles = await until_done(linked.client, fresh)
    assert any("503" in t for t in troubles), troubles
    assert fresh.resumed_with >= kept
    assert fresh.tar.read_bytes() == linked.release.path.read_bytes()
    asked_twice = [i for i, c in linked.hub.chunk_requests.items() if c > 1]
    assert len(asked_twice) <= WINDOW  # only pieces in flight at the drop
    assert sum(linked.hub.chunk_requests.values()) <= n + WINDOW


async def test_no_room_for_the_download_fails_clearly(
    nursery: trio.Nursery, tmp_path: Path, small_fs: Path
) -> None:
    private, public = keypair()
    release = make_release(tmp_path / "big.tar", 80 * CHUNK_SIZE, private)  # 5 MiB > 4 MiB fs
    hub = StandInHub(tmp_path / "gw", "pi-full")
    hub.releases[release.manifest.sha256] = release
    hub.annotation = assignment_of(release)
    await hub.start(nursery)
    data = tmp_path / "agent"
    hub.enroll(data)
    c = await connect(nursery, data)
    client = c.client
    try:
        a = decode_assignment(hub.annotation)
        rel = await fetch_release(client.request, a, public, wait=10)
        d = Download(rel, small_fs / "upgrade", client.request)
        with pytest.raises(Permanent, match="no room for release"):
            await d.run()
        assert hub.chunk_requests == {}  # found out before a piece was asked for
        d.remove()
        assert os.listdir(small_fs / "upgrade") == []
    finally:
        await c.close()


# ---- against the real gateway's release serving ------------------------------------------


async def test_a_release_pushed_to_the_gateway_downloads_through_its_hub(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The gateway serves the pieces of the release its Node's assignment
    names (the job's controller writes it), and 403 for any other."""
    from edgeproto.upgrade import ANNOTATION
    from tests.conftest import start_gateway
    from tests.edgeagent.upgrade_fixtures import push_release, start_job

    private, public = keypair()
    (tmp_path / "release.pub").write_bytes(public)
    gw = await start_gateway(nursery, tmp_path / "gw", release_key=tmp_path / "release.pub")
    data = tmp_path / "agent"
    await join_node(gw, "pi-real", data)
    assert (data / "release.pub").read_bytes() == public  # from the join answer
    release = make_release(tmp_path / "release.tar", 20 * CHUNK_SIZE + 5, private)
    other = make_release(tmp_path / "other.tar", CHUNK_SIZE, private, version="9.9.8")
    await push_release(gw, release)
    await push_release(gw, other)
    c = await connect(nursery, data)
    try:
        await start_job(gw, "up-real", "9.9.9", ["pi-real"])

        async def annotation() -> str | None:
            node = await c.meta.get("nodes//pi-real")
            return ((node or {}).get("metadata") or {}).get("annotations", {}).get(ANNOTATION)

        value = await wait_for(annotation, timeout=15, what="the assignment synced to the board")
        a = decode_assignment(value)
        assert a.release == release.manifest.sha256 and a.job == "up-real"
        rel = await fetch_release(c.client.request, a, public, wait=10)
        d = Download(rel, data / "upgrade", c.client.request)
        tar = (await until_done(c.client, d) and d.tar) or await d.run()
        assert tar.read_bytes() == release.path.read_bytes()
        with pytest.raises(RequestError) as refused:
            await c.client.request("release-chunk", other.manifest.sha256, {"index": 0}, timeout=10)
        assert refused.value.code == 403
    finally:
        await c.close()
        gw.scope.cancel()
