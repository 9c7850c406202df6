"""Join tokens and enrollment over real HTTPS."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
import trio

from cloudgateway._join import JoinError, TokenStore, create_join_token
from edgeagent._join import JoinFailed, join
from tests.conftest import Gateway, join_node


async def test_join_writes_credentials(gateway: Gateway, tmp_path: Path) -> None:
    await join_node(gateway, "pi-7", tmp_path / "a")
    for name in ("node.key", "node.crt", "ca.crt", "enrollment.json"):
        assert (tmp_path / "a" / name).exists()
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "node.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(gateway.data_dir / "admin.token").st_mode) == 0o600
    code, _node = await gateway.api("GET", "/api/v1/nodes/pi-7")
    assert code == 200


async def test_used_unknown_malformed_and_pin_mismatch(gateway: Gateway, tmp_path: Path) -> None:
    token = create_join_token(gateway.data_dir, "pi-8", 600)
    await trio.to_thread.run_sync(join, gateway.join_url, token, tmp_path / "a")
    with pytest.raises(JoinFailed, match="already used"):
        await trio.to_thread.run_sync(join, gateway.join_url, token, tmp_path / "b")
    tid, secret, pin = token.split(".")
    unknown = f"zzzzzz.{secret}.{pin}"
    with pytest.raises(JoinFailed, match="unknown token"):
        await trio.to_thread.run_sync(join, gateway.join_url, unknown, tmp_path / "b")
    with pytest.raises(JoinFailed, match="malformed token"):
        await trio.to_thread.run_sync(join, gateway.join_url, "not-a-token", tmp_path / "b")
    fresh = create_join_token(gateway.data_dir, "pi-9", 600)
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
    token = create_join_token(gateway.data_dir, "pi-late", 0.2)
    await trio.sleep(0.4)
    with pytest.raises(JoinFailed, match="expired"):
        await trio.to_thread.run_sync(join, gateway.join_url, token, tmp_path / "a")


def test_token_store_rules(tmp_path: Path) -> None:
    ts = TokenStore(tmp_path / "t.db")
    tok = ts.create("n1", ttl=60)
    with pytest.raises(JoinError) as info:
        ts.consume(tok, now=time.time() + 120)
    assert info.value.reason == "ExpiredToken"
    assert ts.consume(tok) == "n1"
    with pytest.raises(JoinError) as info:
        ts.consume(tok)
    assert info.value.reason == "UsedToken"
    with pytest.raises(JoinError):
        ts.create("Not_A_Name", ttl=60)
    assert [t["state"] for t in ts.list()] == ["used"]
    ts.close()
