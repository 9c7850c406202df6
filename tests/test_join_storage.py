"""``edgeagent join`` on a read-only or full card (a real read-only bind
mount, a real filled tmpfs, a real gateway): the single-use token is not spent
when the board cannot write its enrollment, so the same token works once the
card takes writes again."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from cloudgateway._join import TokenStore, create_join_token
from edgeagent._join import JoinFailed, join
from tests.conftest import Gateway, fill_up
from tests.storage_fixtures import BindMount, bind_mount

__all__ = ["bind_mount"]  # a fixture


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


async def _token_state(gateway: Gateway, node: str) -> str:
    tokens = await TokenStore(gateway.store).list()
    return str(next(t["state"] for t in tokens if t["node"] == node))


async def test_join_on_a_read_only_card_keeps_the_token(
    gateway: Gateway, bind_mount: BindMount
) -> None:
    """Before, the token was spent first and the write failed after: the board
    could never join with it again."""
    data = bind_mount.path / "agent"
    token = await create_join_token(gateway.data_dir, "pi-ro", 600)
    bind_mount.read_only()
    with pytest.raises(JoinFailed, match="the token was not used"):
        await trio.to_thread.run_sync(join, gateway.join_url, token, data)
    assert await _token_state(gateway, "pi-ro") == "valid"
    bind_mount.writable()
    await trio.to_thread.run_sync(join, gateway.join_url, token, data)
    assert _files(data) == ["ca.crt", "enrollment.json", "node.crt", "node.key"]


async def test_join_on_a_full_card_keeps_the_token(gateway: Gateway, small_fs: Path) -> None:
    data = small_fs / "agent"
    data.mkdir()
    token = await create_join_token(gateway.data_dir, "pi-full", 600)
    filler = fill_up(small_fs)
    with pytest.raises(JoinFailed, match="the token was not used"):
        await trio.to_thread.run_sync(join, gateway.join_url, token, data)
    assert _files(data) == []  # nothing half-written left behind
    assert await _token_state(gateway, "pi-full") == "valid"
    filler.unlink()
    await trio.to_thread.run_sync(join, gateway.join_url, token, data)
    assert _files(data) == ["ca.crt", "enrollment.json", "node.crt", "node.key"]
    code, _node = await gateway.api("GET", "/api/v1/nodes/pi-full")
    assert code == 200
