"""The gateway's configuration (issue 11, defects 4 and 5): parsed once,
passed through whole, nothing silently ignored; every counter reachable."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from cloudgateway._app import RunningGateway, run_gateway
from cloudgateway._cli import _parser, main, serve_config
from cloudgateway._config import ConfigError
from cloudgateway._hub import HubConfig
from cloudgateway._reports import ReportLimits
from tests.conftest import Gateway


def _changed(value: Any) -> Any:
    """A value of the same type, different from the default."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 3
    if isinstance(value, float):
        return value + 0.25
    raise AssertionError(value)


def _toml(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower()


async def test_every_hub_and_report_setting_in_the_file_reaches_the_running_hub(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    want = {
        f.name: _changed(getattr(HubConfig(), f.name))
        for f in dataclasses.fields(HubConfig)
        if f.name not in ("host", "port")
    }
    want |= {"host": "127.0.0.1", "port": 0}
    lines = ["[hub]", *(f"{k} = {_toml(v)}" for k, v in want.items())]
    lines += ["[api]", 'host = "127.0.0.1"', "port = 0", "max_connections = 77"]
    lines += ["[join]", 'host = "127.0.0.1"', "port = 0"]
    limits = {
        f.name: _changed(getattr(ReportLimits(), f.name)) for f in dataclasses.fields(ReportLimits)
    }
    lines += ["[reports]", *(f"{k} = {_toml(v)}" for k, v in limits.items())]
    lines += ["[gateway]", "grace = 12.5", 'sans = ["gw.example"]']
    path = tmp_path / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    args = _parser().parse_args(
        ["serve", "--config", str(path), "--data-dir", str(tmp_path / "gw"), "--grace", "9s"]
    )
    config = serve_config(args)
    running: RunningGateway = await nursery.start(run_gateway, config)
    assert dataclasses.asdict(running.hub.config) == want
    assert dataclasses.asdict(running.hub.report_limits) == limits
    assert running.api.http_statistics()["connections_open"] == 0
    assert config.api.max_connections == 77
    assert config.grace == 9.0  # the flag overrides the file
    assert config.sans == ("gw.example",)
    assert config.data_dir == tmp_path / "gw"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[hub]\nmax_handshake = 3\n", "hub.max_handshake"),
        ("[hub]\nsenders = 2\n[apii]\nport = 1\n", "'apii'"),
        ("max_resyncs = 4\n", "'max_resyncs'"),
        ("[gateway]\nhub = 3\n", "gateway.hub"),
        ('[hub]\nsenders = "16"\n', "hub.senders must be int"),
        ("[api]\nhead_timeout = true\n", "api.head_timeout must be float"),
        ("[gateway]\nsans = [1]\n", "gateway.sans must be a list of strings"),
        ("[hub\n", "gateway.toml"),
    ],
)
def test_an_unknown_key_or_a_wrong_type_is_an_error_naming_it_and_the_file(
    tmp_path: Path, text: str, named: str
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    args = _parser().parse_args(["serve", "--config", str(path)])
    with pytest.raises(ConfigError) as info:
        serve_config(args)
    assert str(path) in str(info.value) and named in str(info.value)


def test_serve_with_a_bad_config_says_so_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("[hub]\nmax_handshake = 3\n")
    assert main(["serve", "--config", str(path), "--data-dir", str(tmp_path / "gw")]) == 1
    err = capsys.readouterr().err
    assert f"{path}: unknown key hub.max_handshake" in err


async def test_metrics_show_every_part(gateway: Gateway) -> None:
    code, _ = await gateway.api("GET", "/api/v1/nodes")
    assert code == 200
    code, text = await trio.to_thread.run_sync(_get_metrics, gateway, gateway.token)
    assert code == 200
    samples = {
        s.name + str(sorted(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    for part in ("hub", "store", "health", "join", "join_http", "api", "api_http"):
        assert any(k.startswith(f"edgeflock_{part}_") for k in samples), part
    assert samples["edgeflock_hub_sessions[]"] == 0
    assert samples["edgeflock_store_rev[]"] >= 0
    listed = "[('code', '200'), ('group', ''), ('resource', 'nodes'), ('subresource', ''), ('verb', 'list')]"
    assert samples[f"edgeflock_api_requests_total{listed}"] == 1
    code, _ = await trio.to_thread.run_sync(_get_metrics, gateway, "wrong")
    assert code == 401


def _get_metrics(gateway: Gateway, token: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(gateway.api_url + "/metrics")
    req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()
