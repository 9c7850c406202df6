"""Agent configuration: parsed once from the data dir into a frozen dataclass.

``DATA_DIR/enrollment.json`` (written by ``edgeagent join``) names the node and
the hub (and, from a gateway with replicas, every replica's hub: ``hubs``);
``DATA_DIR/agent.toml`` (optional) overrides the defaults below;
command-line flags override both. Its ``labels`` (a table, ``labels = {site =
"plant-2"}``, or text, ``labels = "site=plant-2,sensor=modbus"``) are the Node
labels ``edgeagent join`` asks for (a baked image's first boot has them there);
after the join they are the cloud's, and ``run`` only checks them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import edgeproto
from edgeproto.labels import LabelError, check_node_labels, parse_labels

from ._errors import AgentError

__all__ = ["AgentConfig", "ConfigError", "join_labels", "load_config"]


class ConfigError(AgentError):
    """A configuration file is missing, unreadable or has a bad value."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    data_dir: Path
    node: str
    hub_url: str  # the hub enrolled with
    # The hubs of every gateway replica the gateway named at join (the agent
    # learns newer lists on each connect and keeps them in its store).
    hub_urls: tuple[str, ...] = ()
    heartbeat: float = 10.0  # seconds between pings
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    connect_timeout: float = 15.0
    outbox_max: int = 10_000
    outbox_window: int = 64  # reports in flight before waiting for acks
    status_interval: float = 60.0  # node status recomputed this often (sent only on change)
    # Resource usage (node and containers) reported for `top` this often; 0: never.
    stats_interval: float = 30.0
    storage_retry: float = 10.0  # a read-only store (full card) retries writing this often
    max_message: int = 1 << 20
    cri: str | None = None
    # "h2" (default): edged's lean CRI client on the h2 library; "grpcio": grpcio's
    # channel, ~15 MB more resident memory and 7 threads.
    cri_transport: str = "h2"
    mqtt: str | None = None
    # Local MQTT with per-client credentials and ACLs the agent writes (_mqttauth).
    mqtt_auth: bool = False
    mqtt_auth_dir: str | None = None  # default DATA_DIR/mqtt
    mqtt_pid_file: str | None = None  # the broker's pid_file; default MQTT_AUTH_DIR/mosquitto.pid
    # KubeEdge's DMI for v1beta1 mappers (gRPC), e.g. "unix:///run/edgeflock/dmi.sock".
    dmi: str | None = None
    # Prometheus metrics on a loopback listener, e.g. "127.0.0.1:9101" (off when
    # unset: prometheus_client is then never imported).
    metrics: str | None = None
    # Node labels asked for at join (agent.toml ``labels``), sorted (key, value) pairs.
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def hubs(self) -> tuple[str, ...]:
        """The hubs known from the enrollment, the enrolled hub first."""
        return (self.hub_url, *(h for h in self.hub_urls if h != self.hub_url))

    @property
    def meta_path(self) -> Path:
        return self.data_dir / "meta.db"

    @property
    def auth_dir(self) -> Path:
        """Where the agent writes the broker's password and ACL files and the
        mappers' credentials (with ``mqtt_auth``)."""
        return Path(self.mqtt_auth_dir) if self.mqtt_auth_dir else self.data_dir / "mqtt"

    @property
    def broker_pid_file(self) -> Path:
        """The broker's PID file: the agent sends it SIGHUP to reload the ACL."""
        return Path(self.mqtt_pid_file) if self.mqtt_pid_file else self.auth_dir / "mosquitto.pid"


_TUNABLE = {
    f.name: f.type
    for f in dataclasses.fields(AgentConfig)
    if f.name not in ("data_dir", "node", "hub_url", "hub_urls", "labels")
}


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib  # only boards with a config file pay for the parser (and datetime)

    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _labels(path: Path, value: Any) -> dict[str, str]:
    """agent.toml's ``labels``: a table of strings or ``k=v,k2=v2`` text, checked."""
    try:
        if isinstance(value, str):
            return parse_labels(value)
        return check_node_labels(value)
    except LabelError as exc:
        raise ConfigError(f"{path}: labels: {exc}") from None


def join_labels(data_dir: Path) -> dict[str, str]:
    """The Node labels ``DATA_DIR/agent.toml`` asks for (``labels``), checked;
    empty without the file or the key. Read before the board is enrolled, so
    nothing else of the file is looked at."""
    path = data_dir / "agent.toml"
    if not path.exists():
        return {}
    raw = _read_toml(path)
    return _labels(path, raw["labels"]) if "labels" in raw else {}


def load_config(data_dir: Path, **overrides: Any) -> AgentConfig:
    enroll_path = data_dir / "enrollment.json"
    try:
        enrollment = json.loads(enroll_path.read_text())
        node, hub = enrollment["node"], enrollment["hub"]
        hubs = edgeproto.check_hubs(enrollment["hubs"]) if enrollment.get("hubs") else ()
    except FileNotFoundError:
        raise ConfigError(
            f"{enroll_path} not found: run 'edgeagent join --gateway URL --token T "
            f"--data-dir {data_dir}' first"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, edgeproto.ProtocolError) as exc:
        raise ConfigError(f"{enroll_path}: unreadable enrollment ({exc})") from exc
    values: dict[str, Any] = {}
    toml_path = data_dir / "agent.toml"
    if toml_path.exists():
        raw = _read_toml(toml_path)
        for key, value in raw.items():
            name = key.replace("-", "_")
            if name == "labels":
                values["labels"] = tuple(sorted(_labels(toml_path, value).items()))
                continue
            if name not in _TUNABLE:
                raise ConfigError(f"{toml_path}: unknown key {key!r}")
            values[name] = _check(toml_path, key, _TUNABLE[name], value)
    for name, value in overrides.items():
        if value is not None:
            values[name] = value
    cfg = AgentConfig(data_dir=data_dir, node=str(node), hub_url=str(hub), hub_urls=hubs, **values)
    if cfg.heartbeat <= 0 or cfg.backoff_cap < cfg.backoff_base or cfg.outbox_max < 1:
        raise ConfigError(f"{toml_path}: heartbeat, backoff and outbox_max must be positive")
    if cfg.stats_interval < 0:
        raise ConfigError(f"{toml_path}: stats_interval must be 0 (off) or positive")
    if cfg.dmi is not None and not (cfg.dmi.startswith("unix://") and len(cfg.dmi) > 7):
        raise ConfigError(f"{toml_path}: dmi must be unix:///PATH, not {cfg.dmi!r}")
    if cfg.metrics is not None:
        from edgeio._metricsserver import MetricsAddressError, parse_listen

        try:
            parse_listen(cfg.metrics)
        except MetricsAddressError as exc:
            raise ConfigError(f"{toml_path}: {exc}") from None
    return cfg


def _check(path: Path, key: str, typ: Any, value: Any) -> Any:
    t = str(typ)
    if t == "bool" and isinstance(value, bool):
        return value
    if t == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if t == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if t.startswith("str") and isinstance(value, str):
        return value
    raise ConfigError(f"{path}: {key} must be {t}, not {type(value).__name__}")
