"""The gateway's configuration: parsed once into frozen dataclasses.

``cloudgateway serve --config FILE.toml`` reads sections named after the parts
they configure, each key a field of that part's dataclass::

    [gateway]            # GatewayConfig's own fields (data_dir, advertise, grace...)
    [hub]                # HubConfig: host, port, timeouts, admission limits...
    [api]                # HttpConfig of the admin API (and tls = true for HTTPS)
    [join]               # HttpConfig of the enrollment endpoint
    [peer]               # HttpConfig of the replica-to-replica port (logs/exec relay)
    [reports]            # ReportLimits: what one node may write (rates, events kept...)

Command-line flags override the file. A key the gateway does not know (or a
value of the wrong type) is an error naming the key and the file: nothing is
silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import GatewayError
from ._http import HttpConfig
from ._hub import HubConfig
from ._reports import ReportLimits

__all__ = ["ConfigError", "GatewayConfig", "load_config"]


class ConfigError(GatewayError):
    """A configuration file is unreadable or has an unknown key or a bad value."""


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    data_dir: Path
    hub: HubConfig = field(default_factory=HubConfig)
    join: HttpConfig = field(
        default_factory=lambda: HttpConfig(host="0.0.0.0", port=10002, max_body=64 * 1024)
    )
    api: HttpConfig = field(default_factory=lambda: HttpConfig(host="127.0.0.1", port=8080))
    reports: ReportLimits = field(default_factory=ReportLimits)
    api_tls: bool = False  # serve the API over HTTPS (kubectl sends tokens only over TLS)
    advertise: str | None = None  # host agents use for the hub; default: the host they joined by
    sans: tuple[str, ...] = ()
    grace: float = 40.0
    retain_revisions: int = 100_000
    compact_interval: float = 300.0
    # Run the fleet controllers (scheduler, workloads, garbage collection, node
    # groups): in this process, or on the leader of replicas. Off only for tests
    # and tools that drive controllers themselves.
    controllers: bool = True
    event_ttl: float = 3600.0  # Events (edge events) are deleted this long after creation
    store: str = "sqlite"  # the fleet's store: cloudgateway._backends.open_backend
    # Replicas (--store etcd): the port other replicas relay logs and exec
    # through (mutual TLS with replica certificates; host, port, max_connections
    # and head_timeout apply), the host:port they reach it at (default: the
    # advertise host, else this host's name, with the bound port), and this
    # replica's id (default: made once and kept in the data dir's replica.id).
    peer: HttpConfig = field(default_factory=lambda: HttpConfig(host="0.0.0.0", port=10003))
    peer_advertise: str | None = None
    replica_id: str | None = None
    # A file holding a read-only token for /metrics (Prometheus' bearer token);
    # the admin token reads /metrics too. Empty or unreadable: an error at start.
    metrics_token_file: Path | None = None
    # The fleet's release public key (Ed25519, PEM; ``edgectl upgrade keygen``
    # writes it as release.pub): sent to joining boards as ``releaseKey``, and
    # releases whose signature it does not verify are refused at upload.
    release_key: Path | None = None


_SECTIONS = ("gateway", "hub", "api", "join", "reports", "peer")


def load_config(
    path: Path | None,
    *,
    data_dir: Path,
    sections: dict[str, dict[str, Any]] | None = None,
) -> GatewayConfig:
    """``GatewayConfig`` from the TOML file at ``path`` (if any), then
    ``sections`` (``{"hub": {"port": 1}, "gateway": {...}}``, e.g. from flags)
    on top. ``data_dir`` applies unless the file's ``[gateway]`` sets it and
    ``sections`` does not."""
    where = str(path) if path is not None else "command line"
    raw: dict[str, Any] = {}
    if path is not None:
        import tomllib

        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    values: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for name, table in raw.items():
        if name not in _SECTIONS:
            raise ConfigError(
                f"{where}: unknown section or key {name!r} (sections: {', '.join(_SECTIONS)})"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: {name} must be a table ([{name}])")
        values[name].update(table)
    for name, table in (sections or {}).items():
        values[name].update(table)
    gateway = values.pop("gateway")
    gateway.setdefault("data_dir", str(data_dir))
    defaults = GatewayConfig(data_dir=data_dir)
    parts: dict[str, Any] = {}
    for name, table in values.items():
        base = getattr(defaults, name)
        parts[name] = dataclasses.replace(base, **_fields(type(base), table, where, name))
    return GatewayConfig(**_fields(GatewayConfig, gateway, where, "gateway"), **parts)


def _fields(cls: type, table: dict[str, Any], where: str, section: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)} - set(_SECTIONS[1:])
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{where}: unknown key {section}.{key}")
        out[name] = _convert(hints[name], value, f"{where}: {section}.{key}")
    return out


def _convert(typ: Any, value: Any, what: str) -> Any:
    """``value`` (from TOML or a flag) as a ``typ`` field, or a ConfigError."""
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typ is Path:
        if isinstance(value, str | Path):
            return Path(value)
    elif typing.get_origin(typ) in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = (t for t in typing.get_args(typ) if t is not type(None))
        return _convert(inner, value, what)
    elif typing.get_origin(typ) is tuple:
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{what} must be a list of strings, not {value!r}")
    raise ConfigError(f"{what} must be {getattr(typ, '__name__', typ)}, not {value!r}")
