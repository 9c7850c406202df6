"""Baked images run the local broker with the agent's credentials and ACLs: the
broker's configuration and the agent's unit must name the same files."""

from __future__ import annotations

import shlex
from pathlib import Path

from firmware_tools._firstboot import (
    Components,
    agent_unit,
    mosquitto_config,
    mosquitto_unit,
)

from edgeagent._cli import _parser
from edgeagent._config import AgentConfig
from edgeagent._launch import _parser as launch_parser


def _settings(conf: str) -> dict[str, str]:
    out = {}
    for line in conf.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value
    return out


def test_baked_broker_reads_what_the_agent_writes() -> None:
    unit = agent_unit(Components(mosquitto=True))
    line = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    # The unit runs the launcher, which runs `edgeagent run --data-dir D <after -->`.
    assert argv[1] == "launch"
    cut = argv.index("--")
    launch = launch_parser().parse_args(argv[2:cut])
    args = _parser().parse_args(["run", "--data-dir", launch.data_dir, *argv[cut + 1 :]])
    assert args.mqtt_auth is True
    config = AgentConfig(
        data_dir=Path(args.data_dir),
        node="n",
        hub_url="wss://unused",
        mqtt=args.mqtt,
        mqtt_auth=args.mqtt_auth,
        mqtt_auth_dir=args.mqtt_auth_dir,
    )
    broker = _settings(mosquitto_config())
    assert broker["allow_anonymous"] == "false"
    assert broker["password_file"] == str(config.auth_dir / "passwd")
    assert broker["acl_file"] == str(config.auth_dir / "acl")
    assert broker["pid_file"] == str(config.broker_pid_file)  # the agent's SIGHUP goes there
    # Outside the agent's 0700 data dir, so that mosquitto (dropped to its own user)
    # can read the files; the unit makes the directory setgid mosquitto first.
    assert not config.auth_dir.is_relative_to(config.data_dir)
    assert f"install -d -m 2770 -g mosquitto {config.auth_dir}" in mosquitto_unit()


def test_anonymous_mqtt_is_an_explicit_choice() -> None:
    assert "--mqtt-auth" not in agent_unit(Components(mosquitto=True), mqtt_auth=False)
    assert _settings(mosquitto_config(mqtt_auth=False))["allow_anonymous"] == "true"
    assert "password_file" not in mosquitto_config(mqtt_auth=False)
    assert "ExecReload" not in mosquitto_unit(mqtt_auth=False)
