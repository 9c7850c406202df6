"""The gateway's /metrics: Prometheus' text format with TYPE lines, a read-only
metrics token beside the admin token, values that move with the work done,
and device twin values as gauges (numeric ones only)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from edgeagent._join import JoinFailed, join
from tests.conftest import Gateway, create_join_token, start_gateway, wait_for

DEVICES = "/apis/devices.kubeedge.io/v1beta1/namespaces/default/devices"


def scrape(gw: Gateway, token: str | None) -> tuple[int, str, str]:
    req = urllib.request.Request(gw.api_url + "/metrics")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers["content-type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, "", exc.read().decode()


def families(text: str) -> dict[str, Any]:
    return {fam.name: fam for fam in text_string_to_metric_families(text)}


def value(fams: dict[str, Any], sample: str, **labels: str) -> float | None:
    family = fams.get(sample.removesuffix("_total").removesuffix("_count").removesuffix("_sum"))
    for s in family.samples if family is not None else ():
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return None


def device(status: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": "thermo", "namespace": "default"},
        "spec": {"deviceModelRef": {"name": "thermometer"}, "nodeName": "pi-1"},
        "status": {
            "twins": [
                {"propertyName": k, "reported": {"value": v, "metadata": {"type": "string"}}}
                for k, v in status.items()
            ]
        },
    }


async def test_gateway_metrics(nursery: trio.Nursery, tmp_path: Path) -> None:
    token_file = tmp_path / "metrics.token"
    token_file.write_text("read-only-metrics\n")
    gw = await start_gateway(nursery, tmp_path / "gw", metrics_token_file=token_file)

    # Who may read: the admin token and the metrics token; nobody else, and the
    # metrics token reads nothing but /metrics.
    assert (await trio.to_thread.run_sync(scrape, gw, None))[0] == 401
    assert (await trio.to_thread.run_sync(scrape, gw, "wrong"))[0] == 401
    code, ctype, text = await trio.to_thread.run_sync(scrape, gw, "read-only-metrics")
    assert code == 200 and ctype == "text/plain; version=0.0.4; charset=utf-8"
    assert (await trio.to_thread.run_sync(scrape, gw, gw.token))[0] == 200
    saved, gw.token = gw.token, "read-only-metrics"
    assert (await gw.api("GET", "/api/v1/nodes"))[0] == 401
    gw.token = saved

    before = families(text)
    type_lines = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(type_lines) == len(set(type_lines)), "a family appears twice"
    types = {
        "edgeflock_hub_sessions": "gauge",
        "edgeflock_nodes_connected": "gauge",
        "edgeflock_hub_resync_duration_seconds": "histogram",
        "edgeflock_hub_resync_size_bytes": "histogram",
        "edgeflock_hub_reports_received": "counter",
        "edgeflock_hub_reports_rejected": "counter",
        "edgeflock_hub_changes_sent": "counter",
        "edgeflock_hub_resyncs_deferred": "counter",
        "edgeflock_hub_sessions_too_slow": "counter",
        "edgeflock_api_requests": "counter",
        "edgeflock_api_request_duration_seconds": "histogram",
        "edgeflock_api_watches_open": "gauge",
        "edgeflock_store_write_duration_seconds": "histogram",
        "edgeflock_store_write_batch_size": "histogram",
        "edgeflock_join_attempts": "counter",
        "edgeflock_certificate_expiry_timestamp_seconds": "gauge",
        "edgeflock_coord_leader": "gauge",
    }
    for name, kind in types.items():
        assert name in before and before[name].type == kind, name
    for cert in ("ca", "serving"):
        expiry = value(before, "edgeflock_certificate_expiry_timestamp_seconds", certificate=cert)
        assert expiry is not None and expiry > time.time() + 30 * 86400, cert
    assert value(before, "edgeflock_coord_leader") == 1
    commits = value(before, "edgeflock_store_write_batch_size_count") or 0

    # Work moves the numbers: a device with a numeric and a non-numeric twin value.
    code, body = await gw.api("POST", DEVICES, device({}))
    assert code == 201, body
    obj = device({"temperature": "21.5", "switch": "on", "bad": "nan"})
    obj["metadata"]["resourceVersion"] = body["metadata"]["resourceVersion"]
    code, body = await gw.api("PUT", f"{DEVICES}/thermo/status", obj)
    assert code == 200, body
    token = (await create_join_token(gw.data_dir, "pi-2", 600.0)).split(".")
    wrong = ".".join([token[0], "0" * 16, token[2]])  # the right id and CA pin, not the secret
    with pytest.raises(JoinFailed):
        await trio.to_thread.run_sync(join, gw.join_url, wrong, tmp_path / "j")

    async def gauges() -> dict[str, float]:
        _, _, text = await trio.to_thread.run_sync(scrape, gw, gw.token)
        fams = families(text)
        fam = fams.get("edgeflock_device_property")
        if fam is not None:
            assert fam.type == "gauge"
        return {s.labels["property"]: s.value for s in (fam.samples if fam else ())} or {}

    got = await wait_for(gauges)
    assert got == {"temperature": 21.5}  # "on" and "nan" are no number: no sample, no error
    _, _, text = await trio.to_thread.run_sync(scrape, gw, gw.token)
    after = families(text)
    sample = next(s for s in after["edgeflock_device_property"].samples)
    assert sample.labels == {
        "namespace": "default",
        "device": "thermo",
        "property": "temperature",
        "node": "pi-1",
    }
    assert (value(after, "edgeflock_store_write_batch_size_count") or 0) >= commits + 2
    created = value(after, "edgeflock_api_requests_total", verb="create", resource="devices")
    assert created == 1
    status_put = value(
        after, "edgeflock_api_requests_total", verb="update", subresource="status", code="200"
    )
    assert status_put == 1
    assert (value(after, "edgeflock_api_request_duration_seconds_count", verb="create") or 0) >= 1
    refused = [
        s for s in after["edgeflock_join_attempts"].samples if s.labels["outcome"] != "joined"
    ]
    assert sum(s.value for s in refused) == 1

    # A changed value moves its gauge; a deleted device takes its samples along.
    obj = device({"temperature": "22.25"})
    code, body = await gw.api("PUT", f"{DEVICES}/thermo/status", obj)
    assert code == 200, body
    assert (await wait_for(_equals(gauges, {"temperature": 22.25}))) is True
    code, _ = await gw.api("DELETE", f"{DEVICES}/thermo")
    assert code == 200
    assert (await wait_for(_equals(gauges, {}))) is True


def _equals(fn: Any, want: dict[str, float]) -> Any:
    async def check() -> bool:
        return bool(await fn() == want)

    return check
