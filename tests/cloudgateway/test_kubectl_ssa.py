"""``kubectl apply --server-side`` (kubectl 1.32), black-box against a real
gateway over TLS: create, update, conflicts between field managers, forcing,
and removal of what a manager stops applying."""

from __future__ import annotations

from pathlib import Path

from tests.cloudgateway.test_kubectl import gw, ok, run
from tests.conftest import Gateway

__all__ = ["gw"]  # the fixture, used by name


def manifest(tmp_path: Path, image: str, *, label: bool = True) -> str:
    labels = "\n  labels:\n    app: web" if label else ""
    path = tmp_path / "pod.yaml"
    path.write_text(
        f"""apiVersion: v1
kind: Pod
metadata:
  name: web{labels}
spec:
  nodeName: pi-01
  containers:
  - name: app
    image: {image}
    command: ["sleep", "3600"]
    ports:
    - containerPort: 8080
"""
    )
    return str(path)


async def test_kubectl_server_side_apply(gw: Gateway, tmp_path: Path) -> None:
    path = manifest(tmp_path, "busybox:1.36")
    out = await ok(gw, "apply", "--server-side", "--dry-run=server", "-f", path)
    assert out == "pod/web serverside-applied (server dry run)\n"
    records, _ = await gw.store.list("pods/")
    assert records == []
    out = await ok(gw, "apply", "--server-side", "-f", path)
    assert out == "pod/web serverside-applied\n"
    pod = (await gw.store.get("pods/default/web")).value
    (entry,) = pod["metadata"]["managedFields"]
    assert entry["manager"] == "kubectl" and entry["operation"] == "Apply"
    element = entry["fieldsV1"]["f:spec"]["f:containers"]['k:{"name":"app"}']
    assert {".", "f:image", "f:command", "f:ports"} <= element.keys()

    await ok(gw, "apply", "--server-side", "-f", manifest(tmp_path, "busybox:1.37"))
    app = (await gw.store.get("pods/default/web")).value["spec"]["containers"][0]
    assert app["image"] == "busybox:1.37" and app["command"] == ["sleep", "3600"]

    # Another manager changing the image conflicts, naming the owner...
    other = manifest(tmp_path, "busybox:1.38", label=False)
    code, _, err = await run(gw, "apply", "--server-side", "--field-manager", "other", "-f", other)
    assert code != 0
    assert 'conflict with "kubectl"' in err and '.spec.containers[name="app"].image' in err
    assert (await gw.store.get("pods/default/web")).value["spec"]["containers"][0][
        "image"
    ] == "busybox:1.37"
    # ... and takes it over when forced.
    await ok(
        gw, "apply", "--server-side", "--field-manager", "other", "--force-conflicts", "-f", other
    )
    pod = (await gw.store.get("pods/default/web")).value
    assert pod["spec"]["containers"][0]["image"] == "busybox:1.38"
    owners = {e["manager"]: e["fieldsV1"] for e in pod["metadata"]["managedFields"]}
    assert "f:image" not in owners["kubectl"]["f:spec"]["f:containers"]['k:{"name":"app"}']

    # kubectl stops applying the label, which no other manager owns: the label goes.
    await ok(gw, "apply", "--server-side", "-f", manifest(tmp_path, "busybox:1.38", label=False))
    pod = (await gw.store.get("pods/default/web")).value
    assert "app" not in pod["metadata"].get("labels", {})
    assert pod["spec"]["containers"][0]["image"] == "busybox:1.38"

    # kubectl get hides managedFields unless asked.
    assert "managedFields" not in await ok(gw, "get", "pod", "web", "-o", "yaml")
    assert "managedFields" in await ok(
        gw, "get", "pod", "web", "-o", "yaml", "--show-managed-fields"
    )


async def test_kubectl_moves_from_client_side_to_server_side_apply(
    gw: Gateway, tmp_path: Path
) -> None:
    await ok(gw, "apply", "-f", manifest(tmp_path, "busybox:1.36"))
    pod = (await gw.store.get("pods/default/web")).value
    assert [e["manager"] for e in pod["metadata"]["managedFields"]] == ["kubectl-client-side-apply"]
    # kubectl hands client-side apply's fields to its server-side manager
    # (a patch of managedFields), so a changed image does not conflict.
    await ok(gw, "apply", "--server-side", "-f", manifest(tmp_path, "busybox:1.37"))
    pod = (await gw.store.get("pods/default/web")).value
    assert pod["spec"]["containers"][0]["image"] == "busybox:1.37"
    owners = {
        (e["manager"], e["operation"]): e["fieldsV1"] for e in pod["metadata"]["managedFields"]
    }
    # kubectl keeps the annotation up to date under a manager of its own
    assert owners.keys() == {("kubectl", "Apply"), ("kubectl-last-applied", "Apply")}
    annotations = owners["kubectl-last-applied", "Apply"]["f:metadata"]["f:annotations"]
    assert "f:kubectl.kubernetes.io/last-applied-configuration" in annotations
    element = owners["kubectl", "Apply"]["f:spec"]["f:containers"]['k:{"name":"app"}']
    assert "f:image" in element
