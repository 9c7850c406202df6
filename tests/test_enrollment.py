"""Join tokens and enrollment over real HTTPS."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import edgeproto
from cloudgateway._join import JoinError, TokenStore, create_join_token
from cloudgateway._store import SqliteBackend, Store
from edgeagent._join import JoinFailed, join
from tests.conftest import Gateway, ManualClock, join_node


async def test_join_writes_credentials(gateway: Gateway, tmp_path: Path) -> None:
    await join_node(gateway, "pi-7", tmp_path / "a")
    for name in ("node.key", "node.crt", "ca.crt", "enrollment.json"):
        assert (tmp_path / "a" / name).exists()
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "node.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(gateway.data_dir / "admin.token").st_mode) == 0o600
    code, _node = await gateway.api("GET", "/api/v1/nodes/pi-7")
    assert code == 200


async def test_used_unknown_malformed_and_pin_mismatch(gateway: Gateway, tmp_path: Path) -> None:
    token = await create_join_token(gateway.data_dir, "pi-8", 600)
    await trio.to_thread.run_sync(join, gateway.join_url, token, tmp_path / "a")
    with pytest.raises(JoinFailed, match="already used"):
        await trio.to_thread.run_sync(join, gateway.join_url, token, tmp_path / "b")
    tid, secret, pin = token.split(".")
    unknown = f"zzzzzz.{secret}.{pin}"
    with pytest.raises(JoinFailed, match="unknown token"):
        await trio.to_thread.run_sync(join, gateway.join_url, unknown, tmp_path / "b")
    with pytest.raises(JoinFailed, match="malformed token"):
        await trio.to_thread.run_sync(join, gateway.join_url, "not-a-token", tmp_path / "b")
    fresh = await create_join_token(gateway.data_dir, "pi-9", 600)
    tid, secret, _ = fresh.split(".")
    with pytest.raises(JoinFailed, match="does not match the token's pin"):
        await trio.to_thread.run_sync(
            join, gateway.join_url, f"{tid}.{secret}.{'0' * 64}", tmp_path / "b"
        )
    # The pin check happened before the token was sent: it is still usable.
    await trio.to_thread.run_sync(join, gateway.join_url, fresh, tmp_path / "c")
    with pytest.raises(JoinFailed, match="cannot reach the gateway"):
        await trio.to_thread.run_sync(join, "https://127.0.0.1:9", fresh, tmp_path / "d")


async def test_expired_token(gateway: Gateway, tmp_path: Path) -> None:
    # Made an hour ago with a minute to live: expired, without waiting for it.
    token = await create_join_token(
        gateway.data_dir, "pi-late", 60, clock=lambda: time.time() - 3600
    )
    with pytest.raises(JoinFailed, match="expired"):
        await trio.to_thread.run_sync(join, gateway.join_url, token, tmp_path / "a")
    # A token still within its time is accepted by the same gateway.
    fresh = await create_join_token(gateway.data_dir, "pi-late", 60, clock=lambda: time.time() - 30)
    await trio.to_thread.run_sync(join, gateway.join_url, fresh, tmp_path / "b")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    backend = SqliteBackend(str(tmp_path / "store.db"), node_of=edgeproto.owner_node)
    yield Store(backend)
    backend.close()


async def test_token_store_rules(store: Store) -> None:
    ts = TokenStore(store)
    tok = await ts.create("n1", ttl=60)
    with pytest.raises(JoinError) as info:
        await ts.consume(tok, now=time.time() + 120)
    assert info.value.reason == "ExpiredToken"
    assert await ts.consume(tok) == "n1"
    with pytest.raises(JoinError) as info:
        await ts.consume(tok)
    assert info.value.reason == "UsedToken"
    with pytest.raises(JoinError):
        await ts.create("Not_A_Name", ttl=60)
    assert [t["state"] for t in await ts.list()] == ["used"]
    # The secret is kept hashed: the store never holds it.
    (rec,), _ = await store.list("edgeflock.io/jointokens/")
    assert tok.split(".")[1] not in json.dumps(rec.value)


async def test_token_expiry_follows_the_store_clock(store: Store) -> None:
    clock = ManualClock()
    ts = TokenStore(store, clock=clock)
    early = await ts.create("n1", ttl=60)
    late = await ts.create("n2", ttl=60)
    clock.advance(59.9)
    assert [t["state"] for t in await ts.list()] == ["valid", "valid"]
    assert await ts.consume(early) == "n1"
    clock.advance(0.1)  # exactly at expiry: expired
    assert [t["state"] for t in await ts.list()] == ["used", "expired"]
    with pytest.raises(JoinError) as info:
        await ts.consume(late)
    assert info.value.reason == "ExpiredToken"
