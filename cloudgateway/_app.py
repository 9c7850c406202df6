"""The gateway's parts, wired in one visible list: store, PKI, join service,
API server, hub, node health and the compactor; on etcd also the replica's
coordination and peer port (``_replica.py``). Health, compaction, event
pruning and the fleet controllers (``controllers/``) run in the one process, or
on the leading replica only."""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from ._api import ApiServer
from ._backends import open_backend, store_is_shared
from ._config import GatewayConfig
from ._devicegauges import DeviceGauges
from ._errors import GatewayError
from ._events import prune_events
from ._fleet import load_admin_token, load_pki
from ._health import NodeHealth
from ._http import HttpServer, Request
from ._hub import Hub
from ._join import JoinService, TokenStore
from ._metrics import GatewayMetrics, certificate_expiry
from ._nodes import ensure_node
from ._pki import server_ssl_context
from ._releases import Releases, open_release_storage
from ._replica import LeaderWork, Replica
from ._store import Store
from .controllers import run_fleet_controllers

log = logging.getLogger(__name__)

__all__ = ["GatewayConfig", "RunningGateway", "load_admin_token", "run_gateway"]


@dataclass(frozen=True, slots=True)
class RunningGateway:
    """What ``run_gateway`` hands to ``task_status.started``: its ports and parts."""

    ports: dict[str, int]
    store: Store
    hub: Hub
    api: ApiServer
    health: NodeHealth
    join: JoinService
    join_http: HttpServer
    replica: Replica | None = None  # on etcd: coordination, peer port, routing
    metrics: GatewayMetrics | None = None  # what /metrics serves
    releases: Releases | None = None  # agent releases (upgrades)
    job_states: dict[str, str] | None = None  # NodeUpgradeJob -> state, as controlled here

    def statistics(self) -> dict[str, dict[str, int]]:
        """Every part's counters, by part (``/metrics`` serves them as families)."""
        replica = self.replica.statistics() if self.replica is not None else {}
        return {
            **replica,
            "hub": self.hub.statistics(),
            "store": self.store.statistics(),
            "health": self.health.statistics(),
            "join": self.join.statistics(),
            "join_http": self.join_http.statistics(),
            "api": self.api.statistics(),
            "api_http": self.api.http_statistics(),
        }


def _hub_url_for(config: GatewayConfig, hub_port: int) -> Callable[[Request], str]:
    def hub_url(request: Request) -> str:
        host = config.advertise
        if not host:
            host_header = request.headers.get("host", "")
            host = host_header.rsplit(":", 1)[0] if host_header else ""
            if host_header.startswith("["):
                host = host_header.split("]")[0] + "]"
        if not host or host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"wss://{host}:{hub_port}/"

    return hub_url


async def run_gateway(
    config: GatewayConfig,
    *,
    store: Store | None = None,
    task_status: trio.TaskStatus[RunningGateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gateway on ``config.store``, or on ``store`` when given (a store
    shared with other gateways in this process, e.g. in tests; left open)."""
    data_dir = config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    backend = None
    if store is None:
        backend = open_backend(data_dir, config.store)
        store = Store(backend)
    try:
        admin_token = await load_admin_token(store, data_dir)
        shared = backend is None or store_is_shared(config.store)
        pki = await load_pki(store, data_dir, sans=config.sans, shared=shared)
    except BaseException:
        if backend is not None:
            backend.close()
        raise
    try:
        release_key = _release_key(config)
        releases = Releases(open_release_storage(store, data_dir), release_key=release_key)
    except BaseException:
        if backend is not None:
            backend.close()
        raise
    job_states: dict[str, str] = {}  # NodeUpgradeJobs by state, as this process's controller saw
    tokens = TokenStore(store)
    health = NodeHealth(store, grace=config.grace)
    hub_ssl = server_ssl_context(pki, require_client_cert=True)
    hub_ssl.num_tickets = 0  # agents reconnect with a full handshake; tickets cost CPU and memory
    hub_ssl.minimum_version = ssl.TLSVersion.TLSv1_3  # agents are ours; less state per connection
    replicas: list[Replica] = []  # on etcd: this replica's part in the fleet

    def hub_urls() -> Sequence[str]:
        return replicas[0].hub_urls() if replicas else ()

    hub = Hub(
        store,
        hub_ssl,
        health,
        config.hub,
        report_limits=config.reports,
        hub_urls=hub_urls,
        releases=releases,
    )
    on_etcd = backend is not None and config.store.startswith("etcd://")
    replica = Replica(config, pki, hub, store) if on_etcd else None
    if replica is not None:
        replicas.append(replica)
    running: list[RunningGateway] = []  # the parts, once all are started
    devices = DeviceGauges(store)
    metrics = GatewayMetrics(
        lambda: running[0] if running else None,
        devices=devices,
        certificates=certificate_expiry(pki),
    )
    api = ApiServer(
        store,
        admin_token=admin_token,
        node_names=hub.connected_nodes,
        streams=replica.routed if replica is not None else hub,
        metrics=metrics.render,
        metrics_token=_metrics_token(config),
        usage=hub.usage,
        releases=releases,
    )

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)  # on etcd: the replica's one watch
            await nursery.start(devices.run)
            if replica is None:  # one process: it is the leader
                await nursery.start(health.run, hub.connected_nodes)
            hub_port = await nursery.start(hub.run)
            join = JoinService(
                pki,
                tokens,
                hub_url=_hub_url_for(config, hub_port),
                on_joined=functools.partial(ensure_node, store),
                hub_urls=hub_urls if replica is not None else None,
                release_key=release_key.decode() if release_key is not None else None,
            )
            join_http = HttpServer(
                join.handle,
                config.join,
                ssl_context=server_ssl_context(pki, require_client_cert=False),
            )
            join_port = await nursery.start(join_http.run)
            api_ssl = server_ssl_context(pki, require_client_cert=False) if config.api_tls else None
            api_port = await nursery.start(
                functools.partial(api.run, config.api, ssl_context=api_ssl)
            )
            ports = {"hub": hub_port, "join": join_port, "api": api_port}
            if replica is None:  # one process: it is the leader
                if config.controllers:
                    await nursery.start(
                        functools.partial(
                            run_fleet_controllers, store, releases=releases, job_states=job_states
                        )
                    )
                nursery.start_soon(_compactor, store, config)
                nursery.start_soon(_event_pruner, store, config.event_ttl)
            else:
                scheme = "https" if config.api_tls else "http"
                ports["peer"] = await nursery.start(
                    replica.run,
                    hub_port,
                    f"{scheme}://{replica.host}:{api_port}",
                    _leader_work(replica, config, releases, job_states),
                )
            log.info(
                "cloudgateway ready: api %s://%s:%d, join https://%s:%d, hub wss://%s:%d",
                "https" if config.api_tls else "http",
                config.api.host,
                api_port,
                config.join.host,
                join_port,
                config.hub.host,
                hub_port,
            )
            running.append(
                RunningGateway(
                    ports,
                    store,
                    hub,
                    api,
                    health,
                    join,
                    join_http,
                    replica,
                    metrics=metrics,
                    releases=releases,
                    job_states=job_states,
                )
            )
            task_status.started(running[0])
    finally:
        releases.close()
        if backend is not None:
            backend.close()


def _release_key(config: GatewayConfig) -> bytes | None:
    """The fleet's release public key from ``release_key`` (checked to be an
    Ed25519 public key in PEM), if set."""
    path = config.release_key
    if path is None:
        return None
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise GatewayError(f"release_key {path}: {exc}") from exc
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise GatewayError(f"release_key {path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise GatewayError(f"release_key {path} is not an Ed25519 public key")
    return pem


def _metrics_token(config: GatewayConfig) -> str | None:
    """The read-only /metrics token from ``metrics_token_file``, if set."""
    path = config.metrics_token_file
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise GatewayError(f"metrics_token_file {path}: {exc}") from exc
    if not token:
        raise GatewayError(f"metrics_token_file {path} is empty")
    return token


def _leader_work(
    replica: Replica, config: GatewayConfig, releases: Releases, job_states: dict[str, str]
) -> list[LeaderWork]:
    """What only the leading replica does, each on a Store fenced on its term:
    NotReady for nodes no replica holds (measured on the leader's own clock),
    event pruning, compaction and the fleet controllers (scheduler, workloads,
    garbage collection, node groups)."""

    async def health(store: Store) -> None:
        coord = replica.coord
        assert coord is not None
        await NodeHealth(store, grace=config.grace).run(coord.fleet_connected, listed_is_alive=True)

    async def compactor(store: Store) -> None:
        await _compactor(store, config)

    async def pruner(store: Store) -> None:
        await _event_pruner(store, config.event_ttl)

    async def controllers(store: Store) -> None:
        await run_fleet_controllers(store, releases=releases, job_states=job_states)

    return [health, compactor, pruner, *([controllers] if config.controllers else [])]


async def _event_pruner(store: Store, ttl: float) -> None:
    while True:
        await trio.sleep(min(60.0, max(1.0, ttl / 10)))
        try:
            await prune_events(store, ttl)
        except Exception:
            log.exception("pruning events failed; will retry")


async def _compactor(store: Store, config: GatewayConfig) -> None:
    while True:
        await trio.sleep(config.compact_interval)
        try:
            await store.call(store.backend.compact_keep, config.retain_revisions)
        except Exception:
            log.exception("compaction failed; will retry")
