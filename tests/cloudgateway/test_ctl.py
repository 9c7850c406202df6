"""edgectl against a live ApiServer (real SQLite store, real HTTP on loopback):
``ctl.main`` runs in a worker thread with its streams captured."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from cloudgateway import _tables, ctl
from cloudgateway._tables import human_duration
from tests.cloudgateway.test_api import NS, TOKEN, Api, cm, node, pod, start_api
from tests.conftest import edgectl


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("EDGECTL_SERVER", "EDGECTL_TOKEN", "EDGECTL_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    # Never pick up a real gateway's token from this machine.
    empty = tmp_path / "no-gateway"
    empty.mkdir()
    monkeypatch.setenv("EDGEFLOCK_GATEWAY_DIR", str(empty))


@pytest.fixture
async def api(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start_api(nursery, tmp_path / "store.db"):
        yield a


def url(api: Api) -> str:
    return f"http://127.0.0.1:{api.port}"


async def run_ctl(api: Api, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    return await edgectl(*argv, "--server", url(api), "--token", TOKEN, stdin=stdin)


def table(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()]


MANIFEST = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  mode: fast
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
stringData:
  password: hunter2
---
# a comment-only document is skipped
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  nodeName: pi-01
  containers:
  - name: app
    image: busybox:1.36
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: pi-01}
  spec: {}
"""


async def test_apply_creates_then_is_unchanged_then_configures(api: Api, tmp_path: Path) -> None:
    f = tmp_path / "app.yaml"
    f.write_text(MANIFEST)
    rc, out, err = await run_ctl(api, "apply", "-f", str(f))
    assert (rc, err) == (0, "")
    assert out.splitlines() == [
        "configmap/settings created",
        "secret/creds created",
        "pod/web created",
        "node/pi-01 created",
    ]
    _, secret = await api.call("GET", f"{NS}/secrets/creds")
    assert base64.b64decode(secret["data"]["password"]) == b"hunter2"
    # Again: nothing to do (stringData compares equal to the stored data).
    rc, out, _ = await run_ctl(api, "apply", "-f", str(f))
    assert rc == 0 and out.splitlines() == [
        "configmap/settings unchanged",
        "secret/creds unchanged",
        "pod/web unchanged",
        "node/pi-01 unchanged",
    ]
    # Status written by someone else does not make an object "changed", and a
    # re-apply keeps it.
    await api.call("PUT", f"{NS}/pods/web/status", {"status": {"phase": "Running"}})
    f.write_text(MANIFEST.replace("mode: fast", "mode: slow").replace("{app: web}", "{app: w2}"))
    rc, out, _ = await run_ctl(api, "apply", "-f", str(f))
    assert rc == 0 and out.splitlines() == [
        "configmap/settings configured",
        "secret/creds unchanged",
        "pod/web configured",
        "node/pi-01 unchanged",
    ]
    _, got = await api.call("GET", f"{NS}/configmaps/settings")
    assert got["data"] == {"mode": "slow"}
    _, got = await api.call("GET", f"{NS}/pods/web")
    assert got["metadata"]["labels"] == {"app": "w2"} and got["status"] == {"phase": "Running"}


async def test_apply_from_stdin_json_and_namespaces(api: Api) -> None:
    doc = {"kind": "List", "items": [cm("a"), cm("b")]}
    await api.namespace("team")
    await api.namespace("elsewhere")
    rc, out, _ = await run_ctl(api, "apply", "-n", "team", "-f", "-", stdin=json.dumps(doc))
    assert rc == 0 and out.splitlines() == ["configmap/a created", "configmap/b created"]
    _, body = await api.call("GET", "/api/v1/namespaces/team/configmaps")
    assert [i["metadata"]["name"] for i in body["items"]] == ["a", "b"]
    own_ns = cm("c")
    own_ns["metadata"]["namespace"] = "elsewhere"
    rc, out, err = await run_ctl(api, "apply", "-n", "team", "-f", "-", stdin=json.dumps(own_ns))
    assert rc == 1 and out == ""
    assert "STDIN document 1" in err and "does not match the namespace" in err
    rc, out, _ = await run_ctl(api, "apply", "-f", "-", stdin=json.dumps(own_ns))
    assert rc == 0 and out == "configmap/c created\n"
    status, _ = await api.call("GET", "/api/v1/namespaces/elsewhere/configmaps/c")
    assert status == 200


async def test_apply_reports_bad_documents_and_applies_the_rest(api: Api, tmp_path: Path) -> None:
    f = tmp_path / "mixed.yaml"
    f.write_text(
        "\n---\n".join(
            [
                yaml.safe_dump(cm("good1")),
                "just a string",
                yaml.safe_dump({"apiVersion": "v1", "metadata": {"name": "x"}}),
                yaml.safe_dump({"kind": "Widget", "metadata": {"name": "x"}}),
                yaml.safe_dump(
                    {"kind": "ConfigMap", "apiVersion": "v2", "metadata": {"name": "x"}}
                ),
                yaml.safe_dump({"kind": "ConfigMap", "metadata": {}}),
                yaml.safe_dump(
                    {"kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": []}}
                ),
                yaml.safe_dump(cm("good2")),
            ]
        )
    )
    rc, out, err = await run_ctl(api, "apply", "-f", str(f))
    assert rc == 1
    assert out.splitlines() == ["configmap/good1 created", "configmap/good2 created"]
    lines = err.splitlines()
    assert len(lines) == 6
    for n, line in zip(range(2, 8), lines, strict=True):
        assert str(f) in line and f"document {n}" in line, line
    assert "'kind' is required" in lines[1]
    assert 'no kind "Widget"' in lines[2]
    assert "metadata.name is required" in lines[4]
    assert lines[5].startswith("Error from server (Invalid)") and "spec.containers" in lines[5]
    status, _ = await api.call("GET", f"{NS}/pods/x")
    assert status == 404
    # Broken YAML: the error names the document; nothing from that file is applied.
    bad = tmp_path / "broken.yaml"
    bad.write_text(yaml.safe_dump(cm("never")) + "---\nkind: [unclosed\n")
    rc, out, err = await run_ctl(api, "apply", "-f", str(bad))
    assert rc == 1 and out == "" and f"{bad} document 2: invalid YAML" in err
    status, _ = await api.call("GET", f"{NS}/configmaps/never")
    assert status == 404
    rc, _, err = await run_ctl(api, "apply", "-f", str(tmp_path / "missing.yaml"))
    assert rc == 1 and "cannot read" in err and "missing.yaml" in err
    rc, _, err = await run_ctl(api, "apply", "-f", "-", stdin="{bad json")
    assert rc == 1 and "STDIN document 1: invalid JSON" in err


async def seed(api: Api) -> None:
    await api.create("/api/v1/nodes", node("pi-01"))
    await api.create("/api/v1/nodes", node("pi-02"))
    await api.create("/api/v1/nodes", node("pi-03"))
    ready = {
        "conditions": [{"type": "Ready", "status": "True"}],
        "addresses": [{"type": "InternalIP", "address": "10.0.0.11"}],
        "nodeInfo": {
            "kubeletVersion": "v1.30.0-edgeflock",
            "osImage": "Debian",
            "kernelVersion": "6.1.0",
            "architecture": "arm64",
        },
    }
    await api.call("PUT", "/api/v1/nodes/pi-01/status", {"status": ready})
    await api.call(
        "PUT",
        "/api/v1/nodes/pi-02/status",
        {"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
    )
    n = node("pi-01")
    n["metadata"]["labels"] = {"node-role.kubernetes.io/edge": ""}
    await api.call("PUT", "/api/v1/nodes/pi-01", n)
    web = pod("web", "pi-01", {"app": "web"})
    web["spec"]["containers"].append({"name": "side", "image": "busybox"})
    await api.create(f"{NS}/pods", web)
    await api.call(
        "PUT",
        f"{NS}/pods/web/status",
        {
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.11",
                "containerStatuses": [
                    {"name": "app", "ready": True, "restartCount": 2},
                    {"name": "side", "ready": True, "restartCount": 1},
                ],
            }
        },
    )
    await api.create(f"{NS}/pods", pod("db", "pi-02", {"app": "db"}))
    await api.namespace("other")
    await api.create("/api/v1/namespaces/other/pods", pod("far", "pi-03"))
    await api.create(f"{NS}/configmaps", cm("settings", a="1", b="2"))
    await api.create(
        f"{NS}/secrets",
        {"kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"u": "x", "p": "y"}},
    )


async def test_get_tables(api: Api) -> None:
    await seed(api)
    rc, out, err = await run_ctl(api, "get", "pods")
    assert (rc, err) == (0, "")
    rows = table(out)
    assert rows[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [r[:4] for r in rows[1:]] == [
        ["db", "0/1", "Pending", "0"],
        ["web", "2/2", "Running", "3"],
    ]
    assert all(r[4].endswith("s") for r in rows[1:])  # created seconds ago
    rc, out, _ = await run_ctl(api, "get", "po", "-o", "wide")
    rows = table(out)
    assert rows[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert rows[2][5:] == ["10.0.0.11", "pi-01"] and rows[1][5:] == ["<none>", "pi-02"]
    rc, out, _ = await run_ctl(api, "get", "Pod", "-A")
    assert [r[:2] for r in table(out)] == [
        ["NAMESPACE", "NAME"],
        ["default", "db"],
        ["default", "web"],
        ["other", "far"],
    ]
    rc, out, _ = await run_ctl(api, "get", "no")
    rows = table(out)
    assert rows[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [
        ("pi-01", "Ready", "edge"),
        ("pi-02", "NotReady", "<none>"),
        ("pi-03", "Unknown", "<none>"),
    ]
    assert rows[1][4] == "v1.30.0-edgeflock"
    rc, out, _ = await run_ctl(api, "get", "nodes", "pi-01", "-o", "wide")
    rows = table(out)
    assert rows[0][5:] == ["INTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "ARCH"]
    assert rows[1][5:] == ["10.0.0.11", "Debian", "6.1.0", "arm64"]
    rc, out, _ = await run_ctl(api, "get", "cm")
    assert [r[:2] for r in table(out)] == [["NAME", "DATA"], ["settings", "2"]]
    rc, out, _ = await run_ctl(api, "get", "secret")
    assert [r[:3] for r in table(out)] == [["NAME", "TYPE", "DATA"], ["creds", "Opaque", "2"]]
    rc, out, _ = await run_ctl(api, "get", "pods", "-l", "app=web")
    assert [r[0] for r in table(out)] == ["NAME", "web"]
    rc, out, _ = await run_ctl(api, "get", "pods", "--field-selector", "spec.nodeName=pi-02")
    assert [r[0] for r in table(out)] == ["NAME", "db"]
    rc, out, err = await run_ctl(api, "get", "pods", "-n", "empty")
    assert rc == 0 and out == "" and err == "No resources found in empty namespace.\n"


async def test_get_output_formats_and_names(api: Api) -> None:
    await seed(api)
    rc, out, _ = await run_ctl(api, "get", "pod", "web", "-o", "json")
    obj = json.loads(out)
    assert rc == 0 and obj["kind"] == "Pod" and obj["metadata"]["name"] == "web"
    rc, out, _ = await run_ctl(api, "get", "pods", "-o", "json")
    lst = json.loads(out)
    assert lst["kind"] == "List" and [i["metadata"]["name"] for i in lst["items"]] == ["db", "web"]
    rc, out, _ = await run_ctl(api, "get", "pods", "web", "db", "-o", "yaml")
    assert yaml.safe_load(out)["kind"] == "List"
    rc, out, _ = await run_ctl(api, "get", "configmap/settings", "-o", "yaml")
    assert yaml.safe_load(out)["data"] == {"a": "1", "b": "2"}
    rc, out, _ = await run_ctl(api, "get", "nodes", "-o", "name")
    assert out.splitlines() == ["node/pi-01", "node/pi-02", "node/pi-03"]
    rc, out, err = await run_ctl(api, "get", "pods", "web", "nope")
    assert rc == 1 and table(out)[1][0] == "web"
    assert err == 'Error from server (NotFound): pods "nope" not found\n'
    rc, _, err = await run_ctl(api, "get", "widgets")
    assert rc == 1 and err == 'error: the server doesn\'t have a resource type "widgets"\n'
    rc, _, err = await run_ctl(api, "get", "pods", "web", "-A")
    assert rc == 1 and "across all namespaces" in err
    rc, _, err = await run_ctl(api, "get", "pods", "-l", "bad key")
    assert rc == 1 and err.startswith("Error from server (BadRequest)")


async def test_get_watch(api: Api) -> None:
    await api.create(f"{NS}/configmaps", cm("first"))
    done = trio.Event()
    result: list[Any] = []

    async def watcher() -> None:
        result.append(await run_ctl(api, "get", "cm", "-w", "--request-timeout", "1"))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher)
        await api.wait_stat("watches_open", 1)
        await api.create(f"{NS}/configmaps", cm("second", a="1", b="2"))
        await done.wait()
    rc, out, err = result[0]
    assert (rc, err) == (0, "")
    rows = table(out)
    assert rows[0] == ["NAME", "DATA", "AGE"]
    assert [r[:2] for r in rows[1:]] == [["first", "1"], ["second", "2"]]
    rc, out, _ = await run_ctl(
        api, "get", "cm", "first", "-w", "-o", "name", "--request-timeout", "1"
    )
    assert rc == 0 and out == "configmap/first\n"


async def test_delete(api: Api, tmp_path: Path) -> None:
    await seed(api)
    rc, out, err = await run_ctl(api, "delete", "pod", "web", "db")
    assert (rc, err) == (0, "")
    assert out.splitlines() == ['pod "web" deleted', 'pod "db" deleted']
    rc, out, err = await run_ctl(api, "delete", "pods", "web")
    assert rc == 1 and out == "" and err == 'Error from server (NotFound): pods "web" not found\n'
    rc, out, err = await run_ctl(api, "delete", "pods", "web", "--ignore-not-found")
    assert (rc, out, err) == (0, "", "")
    rc, out, _ = await run_ctl(api, "delete", "-n", "other", "po/far")
    assert rc == 0 and out == 'pod "far" deleted\n'
    rc, out, _ = await run_ctl(api, "delete", "no", "pi-03")
    assert rc == 0 and out == 'node "pi-03" deleted\n'
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump(cm("settings")) + "---\n" + yaml.safe_dump(node("pi-02")))
    rc, out, _ = await run_ctl(api, "delete", "-f", str(f))
    assert rc == 0 and out.splitlines() == ['configmap "settings" deleted', 'node "pi-02" deleted']
    for argv in (["delete"], ["delete", "pods"], ["delete", "pods", "-f", str(f)]):
        rc, _, err = await run_ctl(api, *argv)
        assert rc == 2 and err.startswith("error:"), argv


async def test_global_flags_and_token_sources(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.create("/api/v1/nodes", node("pi-01"))
    server = url(api)
    want = "node/pi-01\n"
    # Flags before or after the subcommand.
    rc, out, _ = await edgectl("--server", server, "--token", TOKEN, "get", "no", "-o", "name")
    assert (rc, out) == (0, want)
    rc, out, _ = await edgectl("get", "--server", server, "no", "-o", "name", "--token", TOKEN)
    assert (rc, out) == (0, want)
    # --token-file
    tf = tmp_path / "t"
    tf.write_text(TOKEN + "\n")
    rc, out, _ = await edgectl("--token-file", str(tf), "get", "no", "-o", "name", "-s", server)
    assert (rc, out) == (0, want)
    rc, _, err = await edgectl("--token-file", str(tmp_path / "none"), "get", "no", "-s", server)
    assert rc == 1 and "cannot read token file" in err
    # No token at all: the server says so.
    rc, _, err = await edgectl("get", "no", "--server", server)
    assert rc == 1 and err.startswith("Error from server (Unauthorized)")
    rc, _, err = await edgectl("get", "no", "--server", server, "--token", "wrong")
    assert rc == 1 and err.startswith("Error from server (Unauthorized)")
    # The gateway's admin.token, found through EDGEFLOCK_GATEWAY_DIR.
    gw = tmp_path / "gw"
    gw.mkdir()
    (gw / "admin.token").write_text(TOKEN + "\n")
    monkeypatch.setenv("EDGEFLOCK_GATEWAY_DIR", str(gw))
    rc, out, _ = await edgectl("get", "no", "-o", "name", "--server", server)
    assert (rc, out) == (0, want)
    # Environment variables, which flags override.
    monkeypatch.setenv("EDGECTL_SERVER", server)
    monkeypatch.setenv("EDGECTL_TOKEN", "wrong")
    rc, _, err = await edgectl("get", "no", "-o", "name")
    assert rc == 1 and "Unauthorized" in err
    monkeypatch.setenv("EDGECTL_TOKEN", TOKEN)
    rc, out, _ = await edgectl("get", "no", "-o", "name")
    assert (rc, out) == (0, want)
    rc, _, err = await edgectl("get", "no", "--token", "wrong")
    assert rc == 1 and "Unauthorized" in err
    monkeypatch.delenv("EDGECTL_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("EDGECTL_TOKEN_FILE", str(token_file))
    rc, out, _ = await edgectl("get", "no", "-o", "name")
    assert (rc, out) == (0, want)


async def test_connection_and_usage_errors(tmp_path: Path) -> None:
    # A port nothing listens on.
    probe = trio.socket.socket()
    await probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    rc, out, err = await edgectl("get", "pods", "--server", f"http://127.0.0.1:{port}")
    assert rc == 1 and out == ""
    assert err.startswith(f"error: cannot reach the gateway at http://127.0.0.1:{port}: ")
    for argv in (
        [],
        ["frobnicate"],
        ["get"],
        ["get", "pods", "-o", "xml"],
        ["apply"],
        ["get", "pods", "--server", "ftp://x"],
        ["get", "pods", "--server", "not a url"],
        ["get", "pods", "--request-timeout", "-1"],
        ["get", "pods", "--token", "a", "--token-file", "b"],
    ):
        rc, _, err = await edgectl(*argv)
        assert rc == 2 and err, argv
    rc, out, err = await edgectl("--help")
    assert rc == 0 and "apply" in out and "delete" in out and err == ""


def test_kinds_and_durations() -> None:
    for text in ("pods", "pod", "po", "Pod", "PODS"):
        assert ctl.resolve_kind(text).name == "pods"
    for text, want in (("cm", "configmaps"), ("no", "nodes"), ("Secret", "secrets")):
        assert ctl.resolve_kind(text).name == want
    with pytest.raises(ctl.CtlError):
        ctl.resolve_kind("statefulsets")
    cases = {
        0: "0s",
        59: "59s",
        119: "119s",
        120: "2m",
        150: "2m30s",
        600: "10m",
        3 * 3600: "3h",
        3 * 3600 + 60: "3h1m",
        30 * 3600: "30h",
        50 * 3600: "2d2h",
        10 * 86400: "10d",
        800 * 86400: "2y70d",
        3000 * 86400: "8y",
        -5: "0s",
    }
    for seconds, want in cases.items():
        assert human_duration(seconds) == want, seconds
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3 * 3600 - 65))
    assert _tables._age({"metadata": {"creationTimestamp": ts}}, time.time()) == "3h1m"
    assert _tables._age({"metadata": {"creationTimestamp": "garbage"}}, time.time()) == "<unknown>"


@pytest.mark.parametrize(
    ("rest", "command", "container", "namespace", "timeout"),
    [
        (["--", "sh", "-c", "echo -n x"], ["sh", "-c", "echo -n x"], None, None, 60),
        (["-n", "prod", "--", "ls", "-l"], ["ls", "-l"], None, "prod", 60),
        (["-c", "side", "--timeout=5", "--", "true"], ["true"], "side", None, 5),
        (["--container=app", "-n", "x", "ls"], ["ls"], "app", "x", 60),
        (["ls", "-c", "kept"], ["ls", "-c", "kept"], None, None, 60),
    ],
)
def test_exec_takes_kubectl_option_order(
    rest: list[str], command: list[str], container: str | None, namespace: str | None, timeout: int
) -> None:
    import argparse

    args = argparse.Namespace(container=None, namespace=None, timeout=60)
    assert ctl._exec_options(args, list(rest)) == command
    assert (args.container, args.namespace, args.timeout) == (container, namespace, timeout)


def test_exec_option_errors() -> None:
    import argparse

    args = argparse.Namespace(container=None, namespace=None, timeout=60)
    with pytest.raises(ctl.CtlError, match="needs a value"):
        ctl._exec_options(args, ["-c"])
    with pytest.raises(ctl.CtlError, match="whole seconds"):
        ctl._exec_options(args, ["--timeout", "soon", "--", "true"])
