"""The gateway's ``/metrics``: Prometheus families from every part's
counters, read at scrape time, in the text exposition format 0.0.4.

Names follow Prometheus' conventions: ``edgeflock_<part>_<what>``, counters
end in ``_total``, units are in the name (``_seconds``, ``_bytes``,
``_timestamp_seconds``). The families with labels or histograms are built
here one by one; every other counter of a part's ``statistics()`` is exported
as ``edgeflock_<part>_<name>_total`` (its gauges without the suffix), so a new
counter shows up without a change here. The device property gauge is rendered
by ``_devicegauges.py`` and appended."""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from edgeio._prom import (
    CONTENT_TYPE,
    Metric,
    counter,
    gauge,
    histogram,
    registry_of,
    render,
    statistics_families,
)

if TYPE_CHECKING:
    from ._api import ApiServer
    from ._app import RunningGateway
    from ._devicegauges import DeviceGauges
    from ._pki import GatewayPki

__all__ = ["CONTENT_TYPE", "GatewayMetrics", "api_metrics_text", "certificate_expiry"]

# Which entries of each part's statistics() are gauges (the rest count up).
_GAUGES: dict[str, frozenset[str]] = {
    "hub": frozenset(
        {"sessions", "resyncs_running", "resyncs_waiting", "half_open", "handshakes_waiting"}
    ),
    "store": frozenset({"rev", "subscribers"}),
    "health": frozenset({"tracked"}),
    "api": frozenset({"watches_open", "nodes_connected"}),
    "api_http": frozenset({"connections_open", "connections_waiting"}),
    "join_http": frozenset({"connections_open", "connections_waiting"}),
    "coord": frozenset({"leader", "replicas", "fleet_sessions", "cache_revision"}),
    "peer": frozenset({"connections_open"}),
}
# Counters shown from zero (the parts create theirs on first use): the issue's
# sheds, retry-afters and slow-node disconnects, and live changes sent.
_HUB_ALWAYS = (
    "changes_sent",
    "connections_shed",
    "resyncs_deferred",
    "sessions_too_slow",
    "send_errors",
    "tls_rejected",
)
# Entries a labelled family below says better (left out of the generic ones).
_COVERED: dict[str, frozenset[str]] = {
    "hub": frozenset(
        {
            "sessions",
            "resyncs_snapshot",
            "resyncs_delta",
            "reports",
            "reports_rejected",
            "reports_malformed",
            "reports_throttled",
            "reports_retry",
            "reports_internal_error",
            "upgrade_reports",
        }
    ),
    "api": frozenset({"requests", "errors", "nodes_connected", "watches_open"}),
    "join": frozenset(),
}


def certificate_expiry(pki: GatewayPki) -> dict[str, float]:
    """When the CA and the serving certificate expire (Unix seconds)."""
    from cryptography import x509

    out = {"ca": x509.load_pem_x509_certificate(pki.ca_cert_pem)}
    out["serving"] = x509.load_pem_x509_certificate(Path(pki.server_cert_path).read_bytes())
    return {
        name: cert.not_valid_after_utc.replace(tzinfo=datetime.UTC).timestamp()
        for name, cert in out.items()
    }


def _api_families(api: ApiServer) -> Iterable[Metric]:
    stats = api.requests
    yield counter(
        "edgeflock_api_requests_total",
        "API requests by verb, API group, resource, subresource and HTTP code",
        labels=("verb", "group", "resource", "subresource", "code"),
        samples=sorted(stats.total.items()),
    )
    yield histogram(
        "edgeflock_api_request_duration_seconds",
        "API request latency to the response head (watches not counted)",
        labels=("verb", "group", "resource", "subresource"),
        items=sorted(stats.seconds.items()),
    )
    own = api.statistics()
    yield gauge("edgeflock_api_watches_open", "API watches open", own["watches_open"])
    yield from statistics_families(
        "edgeflock_api",
        {k: v for k, v in own.items() if k not in _COVERED["api"] and not k.startswith("errors_")},
        gauges=_GAUGES["api"],
    )
    yield from statistics_families(
        "edgeflock_api_http", api.http_statistics(), gauges=_GAUGES["api_http"]
    )


def api_metrics_text(api: ApiServer) -> bytes:
    """An API server on its own (no gateway around it): its families only."""
    return render(registry_of(lambda: _api_families(api)))


def _reports(outcomes: Mapping[tuple[str, str], int]) -> Iterable[Metric]:
    received: Counter[str] = Counter()
    for (op, _), n in outcomes.items():
        received[op] += n
    yield counter(
        "edgeflock_hub_reports_received_total",
        "Reports from nodes, by op",
        labels=("op",),
        samples=sorted(((op,), n) for op, n in received.items()),
    )
    yield counter(
        "edgeflock_hub_reports_acked_total",
        "Reports applied and acknowledged, by op",
        labels=("op",),
        samples=sorted(((op,), n) for (op, why), n in outcomes.items() if why == "acked"),
    )
    yield counter(
        "edgeflock_hub_reports_rejected_total",
        "Reports not applied, by op and reason (throttled and store_unavailable "
        "are sent again by the node; the others are final)",
        labels=("op", "reason"),
        samples=sorted(((op, why), n) for (op, why), n in outcomes.items() if why != "acked"),
    )


def _upgrade_families(gw: RunningGateway) -> Iterable[Metric]:
    """Agent upgrades: reports by state (this replica's hub), jobs by state
    (as the controller in this process last saw them: the leader's)."""
    yield counter(
        "edgeflock_hub_upgrade_reports_total",
        "Upgrade reports from boards applied to their job, by the state reported",
        labels=("state",),
        samples=sorted(((state,), n) for state, n in gw.hub.upgrade_report_states().items()),
    )
    jobs: Counter[str] = Counter((gw.job_states or {}).values())
    yield gauge(
        "edgeflock_upgrade_jobs",
        "NodeUpgradeJobs by state, as this process's controller last saw them",
        labels=("state",),
        samples=sorted(
            ((state,), jobs.get(state, 0))
            for state in ("upgrading", "completed", "failed", "aborted")
        ),
    )


class GatewayMetrics:
    """``render()`` is the body of the gateway's ``/metrics``."""

    def __init__(
        self,
        running: Callable[[], RunningGateway | None],
        *,
        devices: DeviceGauges | None = None,
        certificates: Mapping[str, float] | None = None,
    ) -> None:
        self._running = running
        self._devices = devices
        self._certificates = dict(certificates or {})
        self._registry = registry_of(self._collect)

    def device_count(self) -> int:
        """Devices with at least one numeric twin value (the gauge's devices)."""
        return len(self._devices) if self._devices is not None else 0

    def render(self) -> bytes:
        body = render(self._registry)
        return body + self._devices.render() if self._devices is not None else body

    def _collect(self) -> Iterable[Metric]:
        gw = self._running()
        if self._certificates:
            yield gauge(
                "edgeflock_certificate_expiry_timestamp_seconds",
                "When a gateway certificate expires "
                "(ca: the node CA; serving: the API, join and hub certificate)",
                labels=("certificate",),
                samples=sorted(((name,), t) for name, t in self._certificates.items()),
            )
        if gw is None:
            return  # still starting
        yield from self._hub(gw)
        yield from self._store(gw)
        yield from self._join(gw)
        yield from _api_families(gw.api)
        yield from statistics_families(
            "edgeflock_health", gw.health.statistics(), gauges=_GAUGES["health"]
        )
        yield from statistics_families(
            "edgeflock_join_http", gw.join_http.statistics(), gauges=_GAUGES["join_http"]
        )
        yield from self._replica(gw)
        yield from _upgrade_families(gw)

    def _hub(self, gw: RunningGateway) -> Iterable[Metric]:
        hub = gw.hub
        stats = {**dict.fromkeys(_HUB_ALWAYS, 0), **hub.statistics()}
        yield gauge(
            "edgeflock_hub_sessions", "Nodes connected to this replica's hub", stats["sessions"]
        )
        connected = (
            len(gw.replica.coord.fleet_connected())
            if gw.replica is not None and gw.replica.coord is not None
            else stats["sessions"]
        )
        yield gauge("edgeflock_nodes_connected", "Nodes connected to any replica's hub", connected)
        resyncs = sorted(hub.resync_histograms().items())
        yield histogram(
            "edgeflock_hub_resync_duration_seconds",
            "Resyncs by mode (snapshot or delta): seconds from hello to the last message sent",
            labels=("mode",),
            items=[((mode,), secs) for mode, (secs, _) in resyncs],
        )
        yield histogram(
            "edgeflock_hub_resync_size_bytes",
            "Resyncs by mode: bytes of the messages sent",
            labels=("mode",),
            items=[((mode,), size) for mode, (_, size) in resyncs],
        )
        yield from _reports(hub.report_outcomes())
        yield from statistics_families(
            "edgeflock_hub",
            {k: v for k, v in stats.items() if k not in _COVERED["hub"]},
            gauges=_GAUGES["hub"],
        )

    def _store(self, gw: RunningGateway) -> Iterable[Metric]:
        store = gw.store
        yield histogram(
            "edgeflock_store_write_duration_seconds",
            "Store group commits: seconds in the backend",
            items=[((), store.write_seconds)],
        )
        yield histogram(
            "edgeflock_store_write_batch_size",
            "Store group commits: writes per commit",
            items=[((), store.write_batch)],
        )
        yield from statistics_families(
            "edgeflock_store", store.statistics(), gauges=_GAUGES["store"]
        )

    def _join(self, gw: RunningGateway) -> Iterable[Metric]:
        stats = gw.join.statistics()
        outcomes = [(("joined",), n) for k, n in stats.items() if k == "joined"]
        outcomes += [
            ((k[len("rejected_") :],), n) for k, n in stats.items() if k.startswith("rejected_")
        ]
        yield counter(
            "edgeflock_join_attempts_total",
            "Join requests by outcome (joined, or the reason refused)",
            labels=("outcome",),
            samples=sorted(outcomes),
        )
        rest = {k: v for k, v in stats.items() if k != "joined" and not k.startswith("rejected_")}
        yield from statistics_families("edgeflock_join", rest)

    def _replica(self, gw: RunningGateway) -> Iterable[Metric]:
        if gw.replica is None:
            yield gauge(
                "edgeflock_coord_leader", "1 if this replica leads (one process: always)", 1
            )
            return
        parts = gw.replica.statistics()
        coord = gw.replica.coord
        by_replica = getattr(coord, "sessions_by_replica", None)
        if callable(by_replica):
            yield gauge(
                "edgeflock_replica_sessions",
                "Node sessions held by each live replica, as this replica's registry sees them",
                labels=("replica",),
                samples=sorted(((rid,), n) for rid, n in by_replica().items()),
            )
        for part, stats in parts.items():
            yield from statistics_families(f"edgeflock_{part}", stats, gauges=_GAUGES.get(part, ()))
