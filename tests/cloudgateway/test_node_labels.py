"""Node labels at join, through a real gateway and real joins: the labels a
board asks for (``--labels``, agent.toml) beside the well-known ones; bad ones
refused with the token kept; a re-join and the board's status reports leave
what the cloud set (labels, annotations, taints, unschedulable) alone."""

from __future__ import annotations

import io
import json
import platform
import ssl
import urllib.error
import urllib.request
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import trio

from cloudgateway._join import create_join_token, list_join_tokens
from cloudgateway._reports import Reports
from edgeagent import _cli as agent_cli
from edgeagent._config import ConfigError, join_labels, load_config
from edgeagent._join import JoinFailed, join
from edgeproto import Kind, Message
from edgeproto.labels import LabelError, goarch, parse_labels
from tests.conftest import Gateway, join_node, start_agent, wait_for

ARCH = goarch(platform.machine())
MERGE = "application/merge-patch+json"


def node_path(name: str) -> str:
    return f"/api/v1/nodes/{name}"


async def node(gw: Gateway, name: str) -> dict[str, Any]:
    code, body = await gw.api("GET", node_path(name))
    assert code == 200, body
    return body  # type: ignore[no-any-return]


async def merge_patch(gw: Gateway, path: str, patch: Any) -> dict[str, Any]:
    code, body = await trio.to_thread.run_sync(gw.request, "PATCH", path, patch, MERGE)
    assert code == 200, body
    return body  # type: ignore[no-any-return]


async def token_state(gw: Gateway, token: str) -> str:
    tid = token.split(".")[0]
    tokens = await list_join_tokens(gw.data_dir)
    return next(t["state"] for t in tokens if t["id"] == tid)


async def agent_join(gw: Gateway, token: str, data: Path, *extra: str) -> tuple[int, str, str]:
    """``edgeagent join`` (its CLI, in a worker thread): (exit code, stdout, stderr)."""
    argv = ["join", "--gateway", gw.join_url, "--token", token, "--data-dir", str(data), *extra]

    def run() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = agent_cli.main(argv)
        return rc, out.getvalue(), err.getvalue()

    return await trio.to_thread.run_sync(run)


def test_label_text_and_node_restriction() -> None:
    assert parse_labels(" site=plant-2, sensor=modbus ,empty=,") == {
        "site": "plant-2",
        "sensor": "modbus",
        "empty": "",
    }
    assert parse_labels("") == {}
    ok = "topology.kubernetes.io/zone=z1,node.kubernetes.io/pool=p,example.com/x=y"
    assert len(parse_labels(ok)) == 3
    assert parse_labels("kubernetes.io/arch=arm64") == {"kubernetes.io/arch": "arm64"}
    for bad, words in (
        ("site", "expected KEY=VALUE"),
        ("a=1,a=2", "given twice"),
        ("-x=1", "invalid label key '-x'"),
        ("site=plant 2", "invalid value 'plant 2' of label 'site'"),
        ("v=" + "x" * 64, "invalid value"),
        ("node-role.kubernetes.io/edge=", "'node-role.kubernetes.io/edge': a node may not"),
        ("kubernetes.io/role=x", "'kubernetes.io/role'"),
        ("foo.k8s.io/x=1", "'foo.k8s.io/x'"),
    ):
        with pytest.raises(LabelError, match=words):
            parse_labels(bad)


async def test_join_sets_asked_and_well_known_labels(gateway: Gateway, tmp_path: Path) -> None:
    # agent.toml (a baked image's) as a table; --labels over it.
    data = tmp_path / "a1"
    data.mkdir()
    (data / "agent.toml").write_text(
        'heartbeat = 2.0\nlabels = {site = "plant-1", "example.com/tier" = "edge"}\n'
    )
    token = await create_join_token(gateway.data_dir, "pi-01", 600.0)
    rc, out, err = await agent_join(gateway, token, data, "--labels", "site=plant-2,sensor=modbus")
    assert rc == 0, err
    assert "joined as node pi-01" in out and "existed" not in out
    labels = (await node(gateway, "pi-01"))["metadata"]["labels"]
    assert labels == {
        "kubernetes.io/hostname": "pi-01",
        "kubernetes.io/arch": ARCH,
        "kubernetes.io/os": "linux",
        "node-role.kubernetes.io/edge": "",
        "site": "plant-2",
        "sensor": "modbus",
        "example.com/tier": "edge",
    }
    # The agent runs with that agent.toml (labels checked, not an unknown key).
    cfg = load_config(data)
    assert cfg.labels == (("example.com/tier", "edge"), ("site", "plant-1"))
    assert cfg.heartbeat == 2.0

    # agent.toml's labels as text; no labels at all for another board.
    data2 = tmp_path / "a2"
    data2.mkdir()
    (data2 / "agent.toml").write_text('labels = "site=plant-3,zone="\n')
    await join_node(gateway, "pi-02", data2)
    labels = (await node(gateway, "pi-02"))["metadata"]["labels"]
    assert labels["site"] == "plant-3" and labels["zone"] == ""
    await join_node(gateway, "pi-03", tmp_path / "a3")
    labels = (await node(gateway, "pi-03"))["metadata"]["labels"]
    assert set(labels) == {
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "node-role.kubernetes.io/edge",
    }


def _csr() -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    key = ed25519.Ed25519PrivateKey.generate()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, None)
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _post_join(gw: Gateway, body: dict[str, Any]) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=str(gw.data_dir / "ca.crt"))
    ctx.check_hostname = False
    req = urllib.request.Request(
        gw.join_url + "/v1/join", data=json.dumps(body).encode(), method="POST"
    )
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


async def test_bad_labels_are_refused_and_the_token_kept(gateway: Gateway, tmp_path: Path) -> None:
    token = await create_join_token(gateway.data_dir, "pi-bad", 600.0)
    data = tmp_path / "bad"

    # The agent checks first: nothing is sent, nothing written.
    with pytest.raises(JoinFailed, match=r"'kubernetes\.io/role'.*the token was not used"):
        await trio.to_thread.run_sync(
            lambda: join(gateway.join_url, token, data, labels={"kubernetes.io/role": "x"})
        )
    rc, _, err = await agent_join(gateway, token, data, "--labels", "site=a b")
    assert rc == 2 and "--labels: invalid value 'a b' of label 'site'" in err
    data.mkdir()
    (data / "agent.toml").write_text('labels = {site = ["a"]}\n')
    with pytest.raises(ConfigError, match="labels: invalid value"):
        join_labels(data)
    with pytest.raises(JoinFailed, match=r"agent\.toml: labels: invalid value"):
        await trio.to_thread.run_sync(join, gateway.join_url, token, data)
    (data / "agent.toml").unlink()
    assert not (data / "enrollment.json").exists()

    # The gateway decides, whatever a client sends: 400 naming the label, token unused.
    secret = ".".join(token.split(".")[:2])
    for extra, words in (
        ({"labels": {"node-role.kubernetes.io/edge": "x"}}, "'node-role.kubernetes.io/edge'"),
        ({"labels": {"site": "a" * 64}}, "of label 'site'"),
        ({"labels": ["site=a"]}, "labels must be a mapping"),
        ({"arch": "arm 64"}, "arch 'arm 64'"),
        ({"os": 7}, "os 7"),
    ):
        code, body = await trio.to_thread.run_sync(
            _post_join, gateway, {"token": secret, "csr": _csr(), **extra}
        )
        assert code == 400 and body["reason"] == "BadLabels" and words in body["message"], body
    assert await token_state(gateway, token) == "valid"
    code, _ = await gateway.api("GET", node_path("pi-bad"))
    assert code == 404

    # Fixed, the same token joins.
    enrollment = await trio.to_thread.run_sync(
        lambda: join(gateway.join_url, token, data, labels={"site": "a"})
    )
    assert enrollment.node == "pi-bad" and enrollment.node_created
    assert (await node(gateway, "pi-bad"))["metadata"]["labels"]["site"] == "a"
    assert await token_state(gateway, token) == "used"


async def test_rejoin_keeps_what_the_cloud_set(gateway: Gateway, tmp_path: Path) -> None:
    data = tmp_path / "pi"
    token = await create_join_token(gateway.data_dir, "pi-07", 600.0)
    await trio.to_thread.run_sync(
        lambda: join(gateway.join_url, token, data, labels={"site": "a", "tier": "t1"})
    )
    # The operator relabels, annotates, taints and cordons it; and someone
    # mislabels its arch.
    await merge_patch(
        gateway,
        node_path("pi-07"),
        {
            "metadata": {
                "labels": {"site": "b", "team": "x", "tier": None, "kubernetes.io/arch": "s390x"},
                "annotations": {"note": "in the basement"},
            },
            "spec": {
                "unschedulable": True,
                "taints": [{"key": "flaky", "value": "yes", "effect": "NoSchedule"}],
            },
        },
    )
    before = await node(gateway, "pi-07")

    token2 = await create_join_token(gateway.data_dir, "pi-07", 600.0)
    rc, out, err = await agent_join(
        gateway, token2, tmp_path / "pi-again", "--labels", "site=c,tier=t2"
    )
    assert rc == 0, err
    assert "node pi-07 existed: its labels stay as the cloud has them" in out
    after = await node(gateway, "pi-07")
    expected = dict(before["metadata"]["labels"], **{"kubernetes.io/arch": ARCH})
    assert after["metadata"]["labels"] == expected  # site=b, team=x, no tier
    assert after["metadata"]["annotations"] == {"note": "in the basement"}
    assert after["spec"] == before["spec"]

    # A re-join with nothing to refresh writes nothing.
    token3 = await create_join_token(gateway.data_dir, "pi-07", 600.0)
    again = await trio.to_thread.run_sync(join, gateway.join_url, token3, tmp_path / "pi-3")
    assert not again.node_created
    final = await node(gateway, "pi-07")
    assert final["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]


async def test_status_reports_leave_metadata_and_spec_alone(
    nursery: trio.Nursery, gateway: Gateway, tmp_path: Path
) -> None:
    data = tmp_path / "pi"
    await join_node(gateway, "pi-09", data)
    cloud = {
        "metadata": {"labels": {"site": "a"}, "annotations": {"owner": "ops"}},
        "spec": {
            "unschedulable": True,
            "taints": [{"key": "k", "effect": "NoExecute", "timeAdded": "2024-01-01T00:00:00Z"}],
        },
    }
    await merge_patch(gateway, node_path("pi-09"), cloud)

    # The real agent connects and reports its node status.
    agent = await start_agent(nursery, data)

    async def reported() -> Any:
        n = await node(gateway, "pi-09")
        status = n.get("status") or {}
        ready = [c for c in status.get("conditions", []) if c.get("type") == "Ready"]
        return status.get("nodeInfo") and ready and ready[0]["status"] == "True" and n

    n = await wait_for(reported, timeout=20, what="pi-09 reports its status and is Ready")
    assert n["metadata"]["labels"]["site"] == "a"
    assert n["metadata"]["annotations"] == {"owner": "ops"}
    assert n["spec"] == cloud["spec"]
    await agent.stop()

    # A report carrying what is not the board's to say is still only status:
    # straight through the gateway's report handler, on the same store.
    reports = Reports(gateway.store, Counter())
    body = {
        "status": {
            "conditions": [{"type": "DiskPressure", "status": "False"}],
            "metadata": {"labels": {}},
            "spec": {"unschedulable": False, "taints": []},
        }
    }
    msg = Message(Kind.REPORT, id=1, res="nodes//pi-09", op="status", body=body)
    assert await reports.handle("pi-09", msg) == {}
    n2 = await node(gateway, "pi-09")
    assert n2["metadata"]["labels"] == n["metadata"]["labels"]
    assert n2["metadata"]["annotations"] == {"owner": "ops"}
    assert n2["spec"] == cloud["spec"]
    assert {"type": "DiskPressure", "status": "False"} in n2["status"]["conditions"]
