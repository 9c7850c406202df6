"""edgeio's JSON log lines, histograms and metrics address checks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from edgeagent._config import ConfigError, load_config
from edgeio import Histogram, JsonFormatter, set_log_fields
from edgeio._metricsserver import MetricsAddressError, parse_listen


def test_a_json_log_line_has_time_level_logger_message_and_fields() -> None:
    set_log_fields(node="pi-1")
    try:
        record = logging.LogRecord("mappers.x", logging.WARNING, "f.py", 1, "a %s\nb", ("b",), None)
        record.device = "default/thermo"
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            record.exc_info = sys.exc_info()
        line = JsonFormatter().format(record)
    finally:
        set_log_fields(node=None)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "WARNING" and obj["logger"] == "mappers.x"
    assert obj["message"] == "a b\nb" and obj["node"] == "pi-1"
    assert obj["device"] == "default/thermo" and "ValueError: boom" in obj["exception"]
    assert obj["time"].endswith("Z") and obj["time"][10] == "T"


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    h = Histogram((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 9.0):
        h.observe(v)
    assert h.cumulative() == [(1.0, 2), (2.0, 3), (float("inf"), 4)]
    assert h.count == 4 and h.sum == 12.0
    with pytest.raises(ValueError):
        Histogram((2.0, 1.0))


def test_metrics_listen_only_on_loopback() -> None:
    assert parse_listen("127.0.0.1:9101") == ("127.0.0.1", 9101)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("0.0.0.0:9101", "9101", "127.0.0.1:99999", "example.com:1", "127.0.0.1:"):
        with pytest.raises(MetricsAddressError):
            parse_listen(bad)


def test_agent_toml_metrics_address(tmp_path: Path) -> None:
    (tmp_path / "enrollment.json").write_text('{"node": "n", "hub": "wss://h"}')
    (tmp_path / "agent.toml").write_text('metrics = "127.0.0.1:9101"\n')
    assert load_config(tmp_path).metrics == "127.0.0.1:9101"
    (tmp_path / "agent.toml").write_text('metrics = "0.0.0.0:9101"\n')
    with pytest.raises(ConfigError, match="only loopback"):
        load_config(tmp_path)
    (tmp_path / "agent.toml").unlink()
    assert load_config(tmp_path).metrics is None  # off by default
