"""The fleet's release key kept at join (``DATA_DIR/release.pub``): from
``--release-key FILE``, else from the gateway's join answer; shown by
``edgeagent status``. Real gateway, real ``edgeagent join`` (its CLI)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import trio

from cloudgateway._join import create_join_token
from edgeagent._cli import main as agent_main
from edgeagent._releasekey import fingerprint
from tests.conftest import Gateway, start_gateway
from tests.edgeagent.hub_standin import keypair


async def agent_cli(*argv: str) -> tuple[int, str, str]:
    def run() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = agent_main(list(argv))
        return rc, out.getvalue(), err.getvalue()

    return await trio.to_thread.run_sync(run)


async def join_cli(gw: Gateway, node: str, data: Path, *extra: str) -> tuple[int, str, str]:
    token = await create_join_token(gw.data_dir, node, 600.0)
    return await agent_cli(
        "join", "--gateway", gw.join_url, "--token", token, "--data-dir", str(data), *extra
    )


async def test_the_gateways_key_is_kept_at_join_and_shown_in_status(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    _, public = keypair()
    (tmp_path / "release.pub").write_bytes(public)
    gw = await start_gateway(nursery, tmp_path / "gw", release_key=tmp_path / "release.pub")
    data = tmp_path / "agent"
    rc, out, err = await join_cli(gw, "pi-key", data)
    assert rc == 0, err
    assert (data / "release.pub").read_bytes() == public
    fp = fingerprint(public)
    assert f"release key: {fp} (gateway)" in out
    rc, out, _ = await agent_cli("status", "--data-dir", str(data))
    assert f"release key: {fp}" in out
    rc, out, _ = await agent_cli("status", "--data-dir", str(data), "-o", "json")
    assert json.loads(out)["release_key"] == fp
    gw.scope.cancel()


async def test_a_key_given_at_join_wins_and_a_bad_one_spends_no_token(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    _, gateway_key = keypair()
    (tmp_path / "gw.pub").write_bytes(gateway_key)
    gw = await start_gateway(nursery, tmp_path / "gw", release_key=tmp_path / "gw.pub")
    data = tmp_path / "agent"
    bad = tmp_path / "bad.pub"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n")
    token = await create_join_token(gw.data_dir, "pi-own", 600.0)
    argv = ["join", "--gateway", gw.join_url, "--token", token, "--data-dir", str(data)]
    rc, _, err = await agent_cli(*argv, "--release-key", str(bad))
    assert rc == 1
    assert "--release-key: not a PEM public key" in err and "the token was not used" in err
    assert not (data / "enrollment.json").exists() and not (data / "release.pub").exists()
    rc, _, err = await agent_cli(*argv, "--release-key", str(tmp_path / "missing.pub"))
    assert rc == 2 and "--release-key" in err

    _, own = keypair()
    (tmp_path / "own.pub").write_bytes(own)
    rc, out, err = await agent_cli(*argv, "--release-key", str(tmp_path / "own.pub"))
    assert rc == 0, err  # the same token: it was not spent by the refusals
    assert (data / "release.pub").read_bytes() == own
    assert f"release key: {fingerprint(own)} (--release-key)" in out
    gw.scope.cancel()


async def test_without_a_key_anywhere_the_board_has_none(gateway: Gateway, tmp_path: Path) -> None:
    data = tmp_path / "agent"
    rc, out, err = await join_cli(gateway, "pi-nokey", data)
    assert rc == 0, err
    assert "release key: none" in out
    assert not (data / "release.pub").exists()
    rc, out, _ = await agent_cli("status", "--data-dir", str(data))
    assert "release key: none" in out
