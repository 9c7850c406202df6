"""A prepared image's first boot, run for real: the root filesystem is extracted with
debugfs, the first-boot unit's script runs against it (EDGEFLOCK_ROOT prefix) and
joins a real gateway on loopback, then the agent unit's command runs and the node
turns Ready."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from cloudgateway._join import create_join_token
from edgeagent._version import VERSION
from tests.conftest import Gateway, wait_for

from .conftest import PiImage, edgeflash

SITE = (
    Path(sys.prefix)
    / "lib"
    / f"python{sys.version_info.major}.{sys.version_info.minor}"
    / "site-packages"
)
BOARD_PYTHON = (
    Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
)


def _board_site_packages(dest: Path) -> Path:
    """Stand-in for what Raspberry Pi OS's python3 would import from the bundle's other
    wheels: this venv's dependencies, minus edgeflock itself (which must come from the
    image's bundle) and minus pip/setuptools (the board's venv brings its own)."""
    dest.mkdir()
    skip = (
        "edgeflock",
        "__editable__",
        "_distutils_hack",
        "distutils-precedence",
        "pip",
        "setuptools",
        "pkg_resources",
        "_virtualenv",
    )
    for entry in SITE.iterdir():
        if not entry.name.startswith(skip):
            (dest / entry.name).symlink_to(entry)
    return dest


def _exec_start(unit: Path, root: Path) -> list[str]:
    line = next(ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    return [str(root) + a if a.startswith("/") else a for a in argv]


def _unit_environment(unit: Path) -> dict[str, str]:
    """The unit's ``Environment=NAME=VALUE`` lines (one assignment a line, unquoted)."""
    pairs = [
        ln.removeprefix("Environment=").partition("=")
        for ln in unit.read_text().splitlines()
        if ln.startswith("Environment=")
    ]
    return {name: value for name, _, value in pairs}


async def test_first_boot_joins_and_node_becomes_ready(
    gateway: Gateway, pi_image: PiImage, tmp_path: Path, project_bundle: Path
) -> None:
    token = await create_join_token(gateway.data_dir, "pi-fb", 600)
    out = tmp_path / "fleet.img"
    proc = await trio.to_thread.run_sync(
        lambda: edgeflash(
            "prepare",
            "--image",
            pi_image.path,
            "--output",
            out,
            "--gateway",
            gateway.join_url,
            "--token",
            token,
            "--node",
            "pi-fb",
            "--bundle",
            project_bundle,
            "--labels",
            "site=plant-2,sensor=modbus",
        )
    )
    assert proc.returncode == 0, proc.stderr

    root = tmp_path / "rootfs"
    root.mkdir()
    await trio.run_process(
        ["debugfs", "-R", f"rdump / {root}", f"{out}?offset={pi_image.root_offset}"],
        capture_stderr=True,
    )
    assert (root / "etc/edgeflock/join.token").read_text().strip() == token
    assert (
        root / "etc/systemd/system/multi-user.target.wants/edgeflock-firstboot.service"
    ).is_symlink()

    env = dict(os.environ)
    env.update(
        EDGEFLOCK_ROOT=str(root),
        EDGEFLOCK_PYTHON=str(BOARD_PYTHON),
        PYTHONPATH=str(_board_site_packages(tmp_path / "board-site")),
        PIP_NO_INDEX="1",
    )
    env.pop("VIRTUAL_ENV", None)
    firstboot = _exec_start(root / "etc/systemd/system/edgeflock-firstboot.service", root)
    # systemd starts units in /, and so does this: nothing comes from the checkout.
    run = await trio.run_process(
        firstboot, env=env, cwd=root, capture_stdout=True, capture_stderr=True, check=False
    )
    log = run.stdout.decode() + run.stderr.decode()
    assert run.returncode == 0, log
    assert "joining https://127.0.0.1:" in log and "as pi-fb" in log

    # The token is gone, the node's credentials are there, units switched over.
    data = root / "var/lib/edgeflock/agent"
    assert not (root / "etc/edgeflock/join.token").exists()
    assert (data / "enrollment.json").exists()
    assert oct((data / "node.key").stat().st_mode & 0o777) == "0o600"
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert (
        os.readlink(wants / "edgeflock-agent.service")
        == "/etc/systemd/system/edgeflock-agent.service"
    )
    assert not (wants / "edgeflock-firstboot.service").exists()
    # The bundle is installed as the agent's first release slot, by the agent's own code.
    releases = root / "opt/edgeflock"
    assert os.readlink(releases / "current") == f"releases/{VERSION}"
    assert os.readlink(releases / "launcher") == f"releases/{VERSION}"
    assert (releases / "releases" / VERSION / ".edgeflock-installed").is_file()
    assert (releases / "launcher/bin/edgeagent").exists()
    assert f"installed edgeflock {VERSION}; /opt/edgeflock/current and launcher point" in log
    # The services run with PYTHONOPTIMIZE=2: the install wrote that bytecode too.
    site = next((releases / "releases" / VERSION / "lib").glob("python3*/site-packages"))
    for module in ("edgeagent/_app", "edgeagent/edged/_pods", "mappers/modbus/_cli"):
        package, _, name = module.rpartition("/")
        assert list((site / package / "__pycache__").glob(f"{name}.cpython-*.opt-2.pyc")), module

    # Once more, as a second boot would: no token, nothing to do, nothing changed.
    again = await trio.run_process(firstboot, env=env, cwd=root, capture_stderr=True, check=False)
    assert again.returncode != 0 and b"no join token" in again.stderr

    # Start the agent exactly as its unit says (the launcher, which execs the current
    # release's agent; the environment: without docstrings and asserts); the node
    # turns Ready on the gateway.
    agent_unit = root / "etc/systemd/system/edgeflock-agent.service"
    agent_argv = _exec_start(agent_unit, root)
    assert agent_argv[:2] == [str(releases / "launcher/bin/edgeagent"), "launch"]
    assert _unit_environment(agent_unit) == {"PYTHONOPTIMIZE": "2", "PYTHONNODEBUGRANGES": "1"}
    with open(tmp_path / "agent.log", "wb") as agent_log:  # noqa: ASYNC230
        agent = await trio.lowlevel.open_process(
            [*agent_argv, "--heartbeat", "1"],
            env={**env, **_unit_environment(agent_unit)},
            cwd=root,
            stdout=agent_log,
            stderr=subprocess.STDOUT,
        )
        try:

            async def node_ready() -> Any:
                code, body = await gateway.api("GET", "/api/v1/nodes/pi-fb")
                conds = {
                    c["type"]: c["status"] for c in (body.get("status") or {}).get("conditions", [])
                }
                return code == 200 and conds.get("Ready") == "True" and body

            node = await wait_for(node_ready, timeout=30)
            assert node["metadata"]["name"] == "pi-fb"
            # The launcher's process is the agent of the current release now.
            argv = (Path("/proc") / str(agent.pid) / "cmdline").read_bytes().split(b"\0")
            assert argv[1:3] == [str(releases / "current/bin/edgeagent").encode(), b"run"]
            # The labels baked with --labels, asked for by the first boot's join.
            labels = node["metadata"]["labels"]
            assert labels["site"] == "plant-2" and labels["sensor"] == "modbus"
            assert labels["kubernetes.io/hostname"] == "pi-fb"
        finally:
            agent.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await agent.wait()
            if agent.returncode is None:
                agent.kill()
                await agent.wait()
    # The agent that ran is the one pip installed from the image's bundle.
    where = await trio.run_process(
        [
            str(releases / "current/bin/python"),
            "-c",
            "import os, edgeagent; print(os.path.realpath(edgeagent.__file__))",
        ],
        env=env,
        cwd=root,
        capture_stdout=True,
    )
    installed = where.stdout.decode().strip()
    assert installed.startswith(str(releases / "releases" / VERSION / "lib") + "/")


def _extract(img: Path, offset: int, root: Path) -> None:
    root.mkdir()
    subprocess.run(
        ["debugfs", "-R", f"rdump / {root}", f"{img}?offset={offset}"],
        check=True,
        capture_output=True,
    )


def test_first_boot_refuses_a_corrupt_bundle_and_a_swapped_token(
    pi_image: PiImage, tmp_path: Path, project_bundle: Path
) -> None:
    token = "abcdef.0123456789abcdef." + "cd34" * 16
    out = tmp_path / "o.img"
    proc = edgeflash(
        "prepare",
        "--image",
        pi_image.path,
        "--output",
        out,
        "--gateway",
        "https://127.0.0.1:9",
        "--token",
        token,
        "--node",
        "pi-x",
        "--bundle",
        project_bundle,
    )
    assert proc.returncode == 0, proc.stderr
    env = dict(os.environ, EDGEFLOCK_PYTHON=str(BOARD_PYTHON))

    root = tmp_path / "r1"
    _extract(out, pi_image.root_offset, root)
    wheel = next((root / "opt/edgeflock/bundle/wheels").iterdir())
    wheel.write_bytes(wheel.read_bytes()[:-10])
    run = subprocess.run(
        [str(root / "usr/local/lib/edgeflock/firstboot.sh")],
        env=dict(env, EDGEFLOCK_ROOT=str(root)),
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and "is corrupt" in run.stderr
    assert (root / "etc/edgeflock/join.token").exists()  # kept for the next try
    assert not (root / "opt/edgeflock/releases").exists()

    root = tmp_path / "r2"
    _extract(out, pi_image.root_offset, root)
    (root / "etc/edgeflock/join.token").write_text("abcdef.0123456789abcdef." + "00" * 32 + "\n")
    run = subprocess.run(
        [str(root / "usr/local/lib/edgeflock/firstboot.sh")],
        env=dict(env, EDGEFLOCK_ROOT=str(root)),
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and "does not carry the CA pin" in run.stderr


def test_first_boot_retries_the_join_and_takes_a_fresh_token_from_the_boot_partition(
    pi_image: PiImage, tmp_path: Path, project_bundle: Path
) -> None:
    """The gateway does not answer: the join is retried with a doubling pause, and a
    token written to the boot partition (the user's fix for an expired one) replaces
    the baked one; one with another CA's pin is ignored."""
    pin = "ab12" * 16
    out = tmp_path / "o.img"
    proc = edgeflash(
        "prepare", "--image", pi_image.path, "--output", out,
        "--gateway", "https://127.0.0.1:9", "--token", f"abcdef.0123456789abcdef.{pin}",
        "--node", "pi-x", "--bundle", project_bundle,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "r"
    _extract(out, pi_image.root_offset, root)
    (root / "opt/edgeflock/bundle/SHA256SUMS").unlink()  # no install: edgeagent from PATH
    boot = root / "boot/firmware"  # the image's mount point of the FAT partition
    boot.mkdir(parents=True, exist_ok=True)
    fresh = f"fedcba.fedcba9876543210.{pin}"
    (boot / "edgeflock-join.token").write_text("zzzzzz.zzzzzzzzzzzzzzzz." + "00" * 32 + "\n")
    env = dict(
        os.environ,
        EDGEFLOCK_ROOT=str(root),
        EDGEFLOCK_JOIN_ATTEMPTS="3",
        EDGEFLOCK_JOIN_RETRY_MIN="0",
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # this tree's edgeagent
    )
    script = [str(root / "usr/local/lib/edgeflock/firstboot.sh")]
    run = subprocess.run(script, env=env, cwd=root, capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    assert "ignoring" in run.stderr and "does not carry the CA pin" in run.stderr
    assert "cannot reach the gateway" in run.stderr  # the agent's reason, on the console
    assert "join failed (attempt 1); next try in 0 s" in run.stderr
    assert "join failed (attempt 2)" in run.stderr
    assert "join failed; the token is kept" in run.stderr
    # A token with the right pin on the boot partition is taken and kept for the next try.
    (boot / "edgeflock-join.token").write_text(fresh + "\r\n")
    run = subprocess.run(script, env=env, cwd=root, capture_output=True, text=True)
    assert "took the fresh join token" in run.stderr
    assert not (boot / "edgeflock-join.token").exists()
    assert (root / "etc/edgeflock/join.token").read_text().strip() == fresh
    assert oct((root / "etc/edgeflock/join.token").stat().st_mode & 0o777) == "0o600"
