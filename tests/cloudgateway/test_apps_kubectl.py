"""kubectl itself against a real gateway over TLS, for the fleet workload kinds:
create -f, get (-o wide, short names, categories), apply (client- and
server-side), patch, scale, explain, delete; and its rendering of a 422."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import yaml

from tests.cloudgateway.apps_fixtures import SAMPLES, daemonset
from tests.cloudgateway.test_kubectl import ok, run
from tests.conftest import Gateway, start_gateway


@pytest.fixture
async def gw(nursery: trio.Nursery, tmp_path: Path) -> Gateway:
    return await start_gateway(
        nursery, tmp_path / "gw", api_tls=True, controllers=False
    )  # the API alone


def manifests(tmp_path: Path) -> Path:
    path = tmp_path / "all.yaml"
    objs = [make() for make in SAMPLES.values()]
    objs[0]["spec"]["template"]["spec"]["nodeSelector"] = {"site": "a"}
    path.write_text(yaml.safe_dump_all(objs))
    return path


async def test_kubectl_create_get_patch_scale_delete(gw: Gateway, tmp_path: Path) -> None:
    out = await ok(gw, "create", "-f", str(manifests(tmp_path)))
    for name in (
        "daemonset.apps/agent created",
        "deployment.apps/web created",
        "replicaset.apps/web-5d4c created",
        "controllerrevision.apps/agent-6b9f created",
        "nodegroup.apps.kubeedge.io/plant-2 created",
        "edgeapplication.apps.kubeedge.io/sensor created",
    ):
        assert name in out, out
    out = await ok(gw, "get", "ds", "-o", "wide")
    header, row = out.splitlines()
    assert header.split() == [
        "NAME",
        "DESIRED",
        "CURRENT",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "NODE",
        "SELECTOR",
        "AGE",
        "CONTAINERS",
        "IMAGES",
        "SELECTOR",
    ]
    assert row.split()[:7] == ["agent", "0", "0", "0", "0", "0", "site=a"]
    assert row.split()[-3:] == ["app", "busybox:1.36", "app=agent"]
    out = await ok(gw, "get", "deploy")
    assert out.split()[:6] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "web"]
    assert out.split()[6:9] == ["0/3", "0", "0"]
    out = await ok(gw, "get", "rs")
    assert out.split()[:5] == ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    out = await ok(gw, "get", "controllerrevisions")
    assert out.split()[:4] == ["NAME", "CONTROLLER", "REVISION", "AGE"]
    out = await ok(gw, "get", "ng", "-o", "name")
    assert out.split() == ["nodegroup.apps.kubeedge.io/plant-2"]
    out = await ok(gw, "get", "eapp", "-o", "name")
    assert out.split() == ["edgeapplication.apps.kubeedge.io/sensor"]
    out = await ok(gw, "get", "all", "-o", "name")
    assert set(out.split()) == {
        "daemonset.apps/agent",
        "deployment.apps/web",
        "replicaset.apps/web-5d4c",
    }
    # patch (strategic merge, by the container's name), then scale.
    await ok(
        gw,
        "patch",
        "deploy",
        "web",
        "-p",
        json.dumps(
            {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "x:2"}]}}}}
        ),
    )
    got = json.loads(await ok(gw, "get", "deploy", "web", "-o", "json"))
    assert got["spec"]["template"]["spec"]["containers"] == [{"name": "app", "image": "x:2"}]
    assert got["metadata"]["generation"] == 2
    out = await ok(gw, "scale", "deploy/web", "--replicas=5")
    assert "deployment.apps/web scaled" in out, out
    out = await ok(gw, "scale", "rs/web-5d4c", "--replicas=1", "--current-replicas=2")
    assert "scaled" in out, out
    code, _, err = await run(gw, "scale", "rs/web-5d4c", "--replicas=3", "--current-replicas=2")
    assert code != 0 and "Expected replicas to be 2, was 1" in err, err
    got = json.loads(await ok(gw, "get", "deploy", "web", "-o", "json"))
    assert got["spec"]["replicas"] == 5
    # delete
    out = await ok(gw, "delete", "-f", str(tmp_path / "all.yaml"))
    assert out.count("deleted") == len(SAMPLES), out
    assert gw.store is not None
    for prefix in ("daemonsets/", "deployments/", "nodegroups/", "edgeapplications/"):
        records, _ = await gw.store.list(prefix)
        assert records == [], prefix


async def test_kubectl_apply_client_and_server_side(gw: Gateway, tmp_path: Path) -> None:
    ds = daemonset()
    ds["spec"]["template"]["spec"]["containers"].append({"name": "side", "image": "busybox:1.36"})
    path = tmp_path / "ds.yaml"
    path.write_text(yaml.safe_dump(ds))
    assert "created" in await ok(gw, "apply", "-f", str(path))
    ds["spec"]["template"]["spec"]["containers"][0]["image"] = "busybox:1.37"
    path.write_text(yaml.safe_dump(ds))
    assert "configured" in await ok(gw, "apply", "-f", str(path))
    got = json.loads(await ok(gw, "get", "ds", "agent", "-o", "json"))
    images = [c["image"] for c in got["spec"]["template"]["spec"]["containers"]]
    assert images == ["busybox:1.37", "busybox:1.36"]
    assert got["metadata"]["generation"] == 2
    # Server-side: a second manager owns the update strategy; the first one's
    # apply of a changed image conflicts with nothing and keeps it.
    path2 = tmp_path / "deploy.yaml"
    dep = SAMPLES["Deployment"]()
    path2.write_text(yaml.safe_dump(dep))
    out = await ok(gw, "apply", "--server-side", "-f", str(path2))
    assert "serverside-applied" in out, out
    strategy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "50%"}}},
    }
    out = await ok(
        gw,
        "apply",
        "--server-side",
        "--field-manager=ops",
        "-f",
        "-",
        stdin=yaml.safe_dump(strategy),
    )
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "busybox:1.37"
    path2.write_text(yaml.safe_dump(dep))
    await ok(gw, "apply", "--server-side", "-f", str(path2))
    got = json.loads(await ok(gw, "get", "deploy", "web", "-o", "json"))
    assert got["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == "50%"
    assert got["spec"]["template"]["spec"]["containers"][0]["image"] == "busybox:1.37"
    # Changing the selector is refused, and kubectl says where.
    dep["spec"]["selector"]["matchLabels"]["v"] = "2"
    dep["spec"]["template"]["metadata"]["labels"]["v"] = "2"
    path2.write_text(yaml.safe_dump(dep))
    code, _, err = await run(gw, "apply", "--server-side", "-f", str(path2))
    assert code != 0 and "spec.selector" in err and "field is immutable" in err, err


async def test_kubectl_shows_invalid_fields_and_explains(gw: Gateway, tmp_path: Path) -> None:
    bad = daemonset()
    bad["spec"]["selector"]["matchLabels"] = {"app": "other"}
    code, _, err = await run(gw, "create", "-f", "-", stdin=yaml.safe_dump(bad))
    assert code != 0, err
    assert 'DaemonSet "agent" is invalid' in err, err
    assert "spec.template.metadata.labels" in err and "does not match template" in err, err
    code, out, _ = await run(gw, "get", "ds", "agent")
    assert code != 0
    out = await ok(gw, "explain", "deployment.spec.strategy.rollingUpdate")
    assert "maxSurge" in out and "maxUnavailable" in out, out
    out = await ok(gw, "explain", "nodegroups.spec")
    assert "matchLabels" in out and "nodes" in out, out
