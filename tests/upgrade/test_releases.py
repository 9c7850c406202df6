"""Releases on a real gateway (embedded store): the API round trip through
edgectl (push, resumed push, a bad piece, list, delete), and boards reading
pieces through the real hub: only the release their own Node's assignment
names (403 otherwise), 404 for an unknown or unfinished release."""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from edgeproto.upgrade import (
    ANNOTATION,
    CHUNK_SIZE,
    REQUEST_CHUNK,
    REQUEST_MANIFEST,
    Assignment,
    ReleaseManifest,
    encode_assignment,
    encode_manifest,
    sign_manifest,
)
from tests.conftest import Gateway, edgectl, start_gateway
from tests.upgrade.boards import Board, keygen, make_bundle, push

RELEASES = "/apis/edgeflock.io/v1alpha1/releases"


def put_piece(gw: Gateway, sha: str, index: int, data: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"{gw.api_url}{RELEASES}/{sha}/pieces/{index}", data=data, method="PUT"
    )
    req.add_header("Authorization", f"Bearer {gw.token}")
    req.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


async def test_push_resume_bad_piece_list_delete(gateway: Gateway, tmp_path: Path) -> None:
    key, _ = await keygen(tmp_path)
    bundle = make_bundle(tmp_path / "bundle-0.2.0", "0.2.0", size=5 * CHUNK_SIZE + 1000)
    # A push cut short: the release created and two pieces uploaded by hand.
    from cloudgateway._ctl_upgrade import _manifest_of, pack_bundle

    with (tmp_path / "packed.tar").open("w+b") as f:
        pack_bundle(bundle, f)
        m = _manifest_of(f, "0.2.0", "x86_64")
        f.seek(0)
        archive = f.read()
    manifest = encode_manifest(m)
    body = {
        "manifest": base64.b64encode(manifest).decode(),
        "signature": base64.b64encode(sign_manifest(key.read_bytes(), manifest)).decode(),
    }
    status, created = await gateway.api("POST", RELEASES, body)
    assert status == 201, created
    assert created["metadata"]["name"] == m.sha256 and created["spec"]["pieces"] == 6
    assert created["status"] == {"complete": False, "piecesStored": 0, "piecesMissing": 6}
    # A bad piece is refused, naming it; nothing is stored.
    code, err = await trio.to_thread.run_sync(put_piece, gateway, m.sha256, 1, b"x" * CHUNK_SIZE)
    assert code == 400 and "piece 1 does not match the manifest" in err["message"], err
    code, err = await trio.to_thread.run_sync(put_piece, gateway, m.sha256, 1, b"short")
    assert code == 400 and "piece 1 has 5 bytes" in err["message"], err
    code, err = await trio.to_thread.run_sync(put_piece, gateway, m.sha256, 9, b"x")
    assert code == 400 and "out of range" in err["message"], err
    for i in (0, 3):
        code, ok = await trio.to_thread.run_sync(
            put_piece, gateway, m.sha256, i, archive[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE]
        )
        assert code == 200 and not ok["complete"], ok
    status, pieces = await gateway.api("GET", f"{RELEASES}/{m.sha256}/pieces")
    assert status == 200 and pieces["missing"] == [1, 2, 4, 5]
    # The push resumes: same archive (deterministic), only the missing pieces go.
    rc, out, errtext = await gateway.edgectl("upgrade", "push", str(bundle), "--key", str(key))
    assert rc == 0, errtext
    assert out.split()[1] == m.sha256, out
    assert "sent 4 pieces" in out and "2 were on the gateway already" in out, out
    assert (await push(gateway, bundle, key)) == m.sha256  # again: nothing to send
    rc, out, _ = await gateway.edgectl("upgrade", "releases")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["VERSION", "ARCH", "SHA256", "SIZE", "STATE"]
    assert lines[1].split() == ["0.2.0", "x86_64", m.sha256, str(m.size), "complete"], out
    # Another manifest under the same name is a conflict; a bad manifest a 400.
    other = encode_manifest(ReleaseManifest(**{**_fields(m), "created": "2000-01-01T00:00:00Z"}))
    status, err = await gateway.api(
        "POST", RELEASES, {"manifest": base64.b64encode(other).decode(), "signature": "AAAA"}
    )
    assert status == 409 and "another manifest" in err["message"], err
    status, err = await gateway.api("POST", RELEASES, {"manifest": "e30=", "signature": "AAAA"})
    assert status == 400 and "does not decode" in err["message"], err
    status, _ = await gateway.api("DELETE", f"{RELEASES}/{m.sha256}")
    assert status == 200
    status, listed = await gateway.api("GET", RELEASES)
    assert status == 200 and listed["items"] == []
    status, _ = await gateway.api("GET", f"{RELEASES}/{m.sha256}")
    assert status == 404


def _fields(m: ReleaseManifest) -> dict:
    return {f: getattr(m, f) for f in ("version", "arch", "size", "sha256", "chunks", "created")}


@pytest.fixture
async def no_controllers(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway whose controllers do not run: the tests put assignments on
    Nodes by hand (the upgrade controller would take a job-less one off)."""
    gw = await start_gateway(nursery, tmp_path / "gateway", controllers=False)
    yield gw
    gw.scope.cancel()


async def test_boards_read_only_their_assigned_release(
    no_controllers: Gateway, tmp_path: Path
) -> None:
    gateway = no_controllers
    key, pub = await keygen(tmp_path)
    sha = await push(gateway, make_bundle(tmp_path / "b", "0.2.0"), key)
    board = Board(gateway, "pi-a", tmp_path / "pi-a", "0.1.0")
    await board.join()
    async with board.connected():
        # No assignment: nothing to read.
        got = await board.request(REQUEST_MANIFEST, sha)
        assert got["error"]["code"] == 403 and "no upgrade is assigned" in got["error"]["message"]
        _, rel = await gateway.api("GET", f"{RELEASES}/{sha}")
        size = rel["spec"]["size"]

        async def assign(release: str) -> None:
            a = Assignment("job", "uid-1", "0.2.0", release, size, 60)
            patch = {"metadata": {"annotations": {ANNOTATION: encode_assignment(a)}}}
            code, body = await trio.to_thread.run_sync(
                lambda: gateway.request(
                    "PATCH", f"/api/v1/nodes/{board.name}", patch, "application/merge-patch+json"
                )
            )
            assert code == 200, body
            await board.pump(lambda: board.assignment() == a)

        other = "f" * 64
        await assign(other)
        got = await board.request(REQUEST_CHUNK, sha, {"index": 0})
        assert got["error"]["code"] == 403 and "not the one assigned" in got["error"]["message"]
        got = await board.request(REQUEST_MANIFEST, other)
        assert got["error"]["code"] == 404, got  # assigned, but no such release
        await assign(sha)
        assert board.assignment() is not None
        blob = await board.download(board.assignment(), pub.read_bytes())  # type: ignore[arg-type]
        assert len(blob) == size
        got = await board.request(REQUEST_CHUNK, sha, {"index": 10_000})
        assert got["error"]["code"] == 400, got
        served = gateway.running.hub.statistics()["release_bytes_served"]
        assert served == size


async def test_incomplete_release_is_404(no_controllers: Gateway, tmp_path: Path) -> None:
    gateway = no_controllers
    key, _ = await keygen(tmp_path)
    m = ReleaseManifest("0.4.0", "x86_64", 10, "a" * 64, ("b" * 64,), "2026-01-01T00:00:00Z")
    manifest = encode_manifest(m)
    sig = sign_manifest(key.read_bytes(), manifest)
    status, _ = await gateway.api(
        "POST",
        RELEASES,
        {
            "manifest": base64.b64encode(manifest).decode(),
            "signature": base64.b64encode(sig).decode(),
        },
    )
    assert status == 201
    board = Board(gateway, "pi-b", tmp_path / "pi-b", "0.1.0")
    await board.join()
    async with board.connected():
        a = Assignment("job", "uid-1", "0.4.0", m.sha256, 10, 60)
        patch = {"metadata": {"annotations": {ANNOTATION: encode_assignment(a)}}}
        code, _ = await trio.to_thread.run_sync(
            lambda: gateway.request(
                "PATCH", f"/api/v1/nodes/{board.name}", patch, "application/merge-patch+json"
            )
        )
        assert code == 200
        await board.pump(lambda: board.assignment() == a)
        got = await board.request(REQUEST_MANIFEST, m.sha256)
        assert got["error"]["code"] == 404 and "incomplete" in got["error"]["message"], got


async def test_keygen_and_push_find_the_key_where_keygen_put_it(
    gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --out/--key: ~/.config/edgeflock/release.key (XDG_CONFIG_HOME), so
    ``edgectl upgrade push DIR`` is the whole command; without a key, one clear error."""
    monkeypatch.delenv("EDGEFLOCK_RELEASE_KEY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    bundle = make_bundle(tmp_path / "bundle-0.3.0", "0.3.0", size=CHUNK_SIZE + 10)
    rc, _, err = await gateway.edgectl("upgrade", "push", str(bundle))
    assert rc != 0 and "no release key at" in err and "edgectl upgrade keygen" in err, err
    rc, out, err = await edgectl("upgrade", "keygen")
    assert rc == 0, err
    key = tmp_path / "config" / "edgeflock" / "release.key"
    assert os.stat(key).st_mode & 0o777 == 0o600 and key.with_suffix(".pub").exists()
    rc, out, err = await edgectl("upgrade", "keygen")
    assert rc != 0 and "not overwriting" in err, err  # the fleet's key is never replaced
    rc, out, err = await gateway.edgectl("upgrade", "push", str(bundle))
    assert rc == 0, err
    assert "version 0.3.0, arch x86_64" in out, out
