"""First boot on the emulated arm64 board when things go wrong, as they do in the field:
the power is cut while the bundle installs, the gateway is not there yet, and by the
time it is the token has expired — then the user writes a fresh token onto the boot
partition (no reflashing) and the board joins. Runs in the board tier
(``bash scripts/test --board``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.board_fixtures import Board, BoardInputs, HostGateway, bake, run, wait_until

NODE = "pi-faults"
pytestmark = pytest.mark.board_faults


def _boot_partition_offset(image: Path) -> int:
    parts = json.loads(run(["sfdisk", "--json", image]))["partitiontable"]["partitions"]
    return int(parts[0]["start"]) * 512


def test_power_cut_absent_gateway_and_expired_token_then_a_fresh_token(
    arm64_inputs: BoardInputs, tmp_path: Path
) -> None:
    gateway = HostGateway(tmp_path / "gateway")
    board = Board(tmp_path / "sd.img", tmp_path / "qemu")
    try:
        # The gateway's CA exists (the token carries its pin) but the gateway is down
        # when the board first boots; the token's life ends before it is back.
        gateway.start()
        gateway.stop()
        board.image = bake(arm64_inputs, tmp_path, gateway, NODE, gateway.join_token(NODE, "20s"))
        board.start()
        # Power cut in the middle of installing the bundle: the next boot does it again.
        board.wait_console(r"edgeflock-firstboot: installing the agent", timeout=900)
        board.kill()
        board.start()
        mark = len(board.console())
        board.wait_console(r"edgeflock-firstboot: installing the agent", timeout=900, since=mark)
        # No gateway: the join is retried, the pause doubling each time.
        board.wait_console(r"join failed \(attempt 2\); next try in 10 s", timeout=900, since=mark)
        # The gateway is back, but the token has expired: a clear error, still retried.
        gateway.start()
        board.wait_console(r"token expired", timeout=600, since=mark)
        board.wait_console(r"join failed \(attempt \d+\); next try in \d+ s", timeout=300,
                           since=mark)  # fmt: skip
        # The user powers the board off, writes a fresh token onto the boot partition
        # (FAT: from any computer) and powers it on again.
        board.kill()
        fresh = tmp_path / "fresh.token"
        fresh.write_text(gateway.join_token(NODE) + "\n")
        offset = _boot_partition_offset(board.image)
        run(["mcopy", "-o", "-i", f"{board.image}@@{offset}", fresh, "::/edgeflock-join.token"])
        board.start()
        node = wait_until(lambda: gateway.node_ready(NODE), timeout=900, what="Node Ready")
        assert node["status"]["nodeInfo"]["architecture"] == "arm64"
        console = board.console()
        assert "took the fresh join token from /boot/firmware/edgeflock-join.token" in console
        assert "edgeflock-firstboot: done" in console
        # The fresh token was consumed from the boot partition; the agent's unit is on.
        code, _, _ = board.exec("test", "-e", "/boot/firmware/edgeflock-join.token", check=False)
        assert code == 1
        _, active, _ = board.exec("systemctl", "is-enabled", "edgeflock-agent.service")
        assert active.strip() == "enabled"
    finally:
        board.kill()
        gateway.stop()
