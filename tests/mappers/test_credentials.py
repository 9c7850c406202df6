"""A mapper's MQTT login from the file the agent writes (mqtt_auth)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mappers._credentials import load_credentials
from mappers._errors import ConfigError
from mappers.modbus import main as modbus_main


def test_credentials_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mapper-modbus.cred"
    with pytest.raises(ConfigError, match="no such credentials file"):
        load_credentials(path)
    path.write_text("{")
    with pytest.raises(ConfigError, match="not JSON"):
        load_credentials(path)
    path.write_text('{"username": "u"}')
    with pytest.raises(ConfigError, match=str(path)):
        load_credentials(path)
    path.write_text('{"username": "mapper-modbus", "password": "s3cret"}')
    cred = load_credentials(path)
    assert (cred.username, cred.password) == ("mapper-modbus", "s3cret")
    assert "s3cret" not in repr(cred)


def test_mapper_without_its_credentials_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "mapper-modbus.cred"
    argv = ["--mqtt", "tcp://127.0.0.1:1", "--node", "n", "--mqtt-credentials", str(missing)]
    assert modbus_main(argv) == 2
    assert f"{missing}: no such credentials file" in capsys.readouterr().out
