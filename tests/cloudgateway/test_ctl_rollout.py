"""edgectl rollout status|history|undo|pause|resume|restart, set image and
scale, against an API with no controllers behind it: real SQLite store, one ApiServer on plain HTTP (the tests' own calls,
edgectl) and one on TLS with the same store (kubectl sends tokens only over
TLS). No controller runs, so the rollout states the tests stage through the
API (objects, their /status) stay as staged while both clients read them."""

from __future__ import annotations

import io
import json
import re
import subprocess
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

import edgeproto
from cloudgateway import ctl
from cloudgateway._api import ApiServer
from cloudgateway._cli import kubeconfig
from cloudgateway._ctl_rollout_views import (
    CHANGE_CAUSE,
    DS_PAUSED,
    DS_PENDING_OFFLINE,
    RESTARTED_AT,
    REVISION,
)
from cloudgateway._http import HttpConfig
from cloudgateway._pki import load_or_create_pki, server_ssl_context
from cloudgateway._store import SqliteBackend, Store
from tests.cloudgateway.apps_fixtures import (
    controllerrevision,
    daemonset,
    deployment,
    replicaset,
    template,
)
from tests.cloudgateway.test_api import TOKEN, Api
from tests.cloudgateway.test_kubectl import KUBECTL
from tests.conftest import Gateway, edgectl, wait_for

APPS = "/apis/apps/v1/namespaces/default"


@dataclass
class Cluster:
    api: Api
    data_dir: Path
    kubeconfig: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api.port}"

    async def edgectl(self, *argv: str) -> tuple[int, str, str]:
        return await edgectl(*argv, "--server", self.url, "--token", TOKEN)

    async def kubectl(self, *argv: str) -> tuple[int, str, str]:
        def go() -> tuple[int, str, str]:
            p = subprocess.run(
                [KUBECTL, "--kubeconfig", str(self.kubeconfig), *argv],
                capture_output=True,
                text=True,
                timeout=60,
            )
            return p.returncode, p.stdout, p.stderr

        return await trio.to_thread.run_sync(go)

    async def create(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        return await self.api.create(f"{APPS}/{plural}", obj)

    async def get(self, plural: str, name: str) -> dict[str, Any]:
        status, body = await self.api.call("GET", f"{APPS}/{plural}/{name}")
        assert status == 200, body
        return dict(body)

    async def set_status(self, plural: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Write ``status`` through the /status subresource (as a controller does)."""
        code, body = await self.api.call(
            "PUT", f"{APPS}/{plural}/{name}/status", {"status": status}
        )
        assert code == 200, body
        return dict(body)

    async def bump(self, plural: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of the object (a spec change moves its generation)."""
        code, body = await self.api.call(
            "PATCH",
            f"{APPS}/{plural}/{name}",
            patch,
            ctype="application/merge-patch+json",
        )
        assert code == 200, body
        return dict(body)


async def start_cluster(nursery: trio.Nursery, tmp: Path) -> AsyncIterator[Cluster]:
    data_dir = tmp / "gw"
    pki = load_or_create_pki(data_dir, sans=("127.0.0.1",))
    (data_dir / "admin.token").write_text(TOKEN + "\n")
    backend = SqliteBackend(str(tmp / "store.db"), node_of=edgeproto.owner_node)
    store = Store(backend)
    plain = ApiServer(store, admin_token=TOKEN, node_names=lambda: [])
    tls = ApiServer(store, admin_token=TOKEN, node_names=lambda: [])
    port = await nursery.start(plain.run, HttpConfig(host="127.0.0.1", port=0))
    tls_port = await nursery.start(
        lambda task_status: tls.run(
            HttpConfig(host="127.0.0.1", port=0),
            ssl_context=server_ssl_context(pki, require_client_cert=False),
            task_status=task_status,
        )
    )
    config = tmp / "kubeconfig"
    config.write_text(json.dumps(kubeconfig(data_dir, f"https://127.0.0.1:{tls_port}")))
    try:
        yield Cluster(Api(port, plain, store, backend), data_dir, config)
    finally:
        backend.close()


@dataclass
class Running:
    """``edgectl`` running in a worker thread, its output readable as it goes."""

    out: io.StringIO = field(default_factory=io.StringIO)
    err: io.StringIO = field(default_factory=io.StringIO)
    rc: int | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def start(self, argv: list[str]) -> None:
        def run() -> None:
            try:
                self.rc = ctl.main(argv, stdout=self.out, stderr=self.err)
            finally:
                self.done.set()

        threading.Thread(target=run, daemon=True).start()

    def lines(self) -> list[str]:
        return self.out.getvalue().splitlines()


@pytest.fixture
async def cl(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Cluster]:
    async for c in start_cluster(nursery, tmp_path):
        yield c


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("EDGECTL_SERVER", "EDGECTL_TOKEN", "EDGECTL_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    empty = tmp_path / "no-gateway"
    empty.mkdir()
    monkeypatch.setenv("EDGEFLOCK_GATEWAY_DIR", str(empty))


def rolling_ds(name: str, **spec: Any) -> dict[str, Any]:
    """A DaemonSet with its update strategy spelt out (Kubernetes' API defaults it
    to RollingUpdate; kubectl reads it from the object)."""
    ds = daemonset(name)
    ds["spec"]["updateStrategy"] = {"type": "RollingUpdate"}
    ds["spec"].update(spec)
    return ds


def ds_status(
    generation: int, desired: int, updated: int = 0, available: int = 0
) -> dict[str, Any]:
    """A DaemonSet status with every field the API requires."""
    return {
        "observedGeneration": generation,
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": desired,
        "updatedNumberScheduled": updated,
        "numberAvailable": available,
        "numberReady": available,
        "numberMisscheduled": 0,
    }


def owned_by(owner: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "apps/v1",
            "kind": owner["kind"],
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def revision(ds: dict[str, Any], n: int, image: str, cause: str | None = None) -> dict[str, Any]:
    """A ControllerRevision of ``ds`` as the DaemonSet controller records one."""
    cr = controllerrevision(f"{ds['metadata']['name']}-r{n}", n)
    tmpl = template(ds["spec"]["template"]["metadata"]["labels"], image)
    cr["data"] = {"spec": {"template": {**tmpl, "$patch": "replace"}}}
    cr["metadata"]["labels"] = dict(ds["spec"]["selector"]["matchLabels"])
    cr["metadata"]["ownerReferences"] = owned_by(ds)
    if cause:
        cr["metadata"]["annotations"] = {CHANGE_CAUSE: cause}
    return cr


def rs_of(d: dict[str, Any], n: int, image: str, cause: str | None = None) -> dict[str, Any]:
    """A ReplicaSet of Deployment ``d`` at revision ``n``, as its controller makes one."""
    labels = {**d["spec"]["selector"]["matchLabels"], "pod-template-hash": f"h{n}"}
    rs = replicaset(f"{d['metadata']['name']}-h{n}", 0, labels)
    rs["spec"]["template"] = template(labels, image)
    rs["metadata"]["labels"] = labels
    rs["metadata"]["ownerReferences"] = owned_by(d)
    rs["metadata"]["annotations"] = {REVISION: str(n)}
    if cause:
        rs["metadata"]["annotations"][CHANGE_CAUSE] = cause
    return rs


# ---- rollout status -------------------------------------------------------------------


async def status_once(
    cl: Cluster, target: str
) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
    """``rollout status TARGET --watch=false`` by edgectl and by kubectl."""
    mine = await cl.edgectl("rollout", "status", target, "--watch=false")
    theirs = await cl.kubectl("rollout", "status", target, "--watch=false")
    return mine, theirs


async def test_daemonset_status_decisions_match_kubectl(cl: Cluster) -> None:
    ds = await cl.create("daemonsets", rolling_ds("agent"))
    assert ds["metadata"]["generation"] == 1
    # Not yet observed by the controller.
    (rc, out, err), (krc, kout, kerr) = await status_once(cl, "ds/agent")
    assert (rc, err, krc, kerr) == (0, "", 0, "")
    assert out == kout == "Waiting for daemon set spec update to be observed...\n"
    # Rolling: one of two updated; a board offline is listed as pending.
    ds = await cl.bump(
        "daemonsets", "agent", {"metadata": {"annotations": {DS_PENDING_OFFLINE: "pi-03"}}}
    )
    gen = ds["metadata"]["generation"]
    staged = {
        "observedGeneration": gen,
        "desiredNumberScheduled": 2,
        "currentNumberScheduled": 2,
        "updatedNumberScheduled": 1,
        "numberAvailable": 1,
        "numberReady": 1,
        "numberMisscheduled": 0,
    }
    await cl.set_status("daemonsets", "agent", staged)
    (rc, out, _), (_, kout, _) = await status_once(cl, "daemonset/agent")
    first = (
        'Waiting for daemon set "agent" rollout to finish: 1 out of 2 new pods have been updated...'
    )
    assert rc == 0 and kout == first + "\n"
    assert out.splitlines() == [
        first,
        "  1 offline board pending (updated when back online): pi-03",
    ]
    # All updated, one not yet available.
    await cl.set_status("daemonsets", "agent", {**staged, "updatedNumberScheduled": 2})
    (rc, out, _), (_, kout, _) = await status_once(cl, "ds/agent")
    assert out.splitlines()[0] + "\n" == kout
    assert (
        kout
        == 'Waiting for daemon set "agent" rollout to finish: 1 of 2 updated pods are available...\n'
    )
    # Done: kubectl's words, nothing more.
    await cl.set_status(
        "daemonsets", "agent", {**staged, "updatedNumberScheduled": 2, "numberAvailable": 2}
    )
    (rc, out, _), (krc, kout, _) = await status_once(cl, "ds/agent")
    assert (rc, krc) == (0, 0) and out == kout == 'daemon set "agent" successfully rolled out\n'
    # OnDelete has no rollout status: an error for both.
    await cl.bump("daemonsets", "agent", {"spec": {"updateStrategy": {"type": "OnDelete"}}})
    (rc, _, err), (krc, _, kerr) = await status_once(cl, "ds/agent")
    assert (rc, krc) == (1, 1)
    assert (
        err == kerr == "error: rollout status is only available for RollingUpdate strategy type\n"
    )


async def test_deployment_status_decisions_match_kubectl(cl: Cluster) -> None:
    d = await cl.create("deployments", deployment("web", replicas=3))
    gen = d["metadata"]["generation"]
    base = {"observedGeneration": gen, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}
    cases = [
        ({"updatedReplicas": 1, "replicas": 4}, "1 out of 3 new replicas have been updated..."),
        ({"replicas": 4}, "1 old replicas are pending termination..."),
        ({"availableReplicas": 2}, "2 of 3 updated replicas are available..."),
    ]
    for change, words in cases:
        await cl.set_status("deployments", "web", {**base, **change})
        (rc, out, _), (krc, kout, _) = await status_once(cl, "deploy/web")
        want = f'Waiting for deployment "web" rollout to finish: {words}\n'
        assert (rc, krc) == (0, 0) and out == kout == want
    await cl.set_status("deployments", "web", base)
    (rc, out, _), (_, kout, _) = await status_once(cl, "deployments/web")
    assert rc == 0 and out == kout == 'deployment "web" successfully rolled out\n'
    # A paused Deployment is waited on as kubectl does, with the pause said.
    await cl.bump("deployments", "web", {"spec": {"paused": True}})
    await cl.set_status(
        "deployments", "web", {**base, "observedGeneration": gen + 1, "updatedReplicas": 2}
    )
    (rc, out, _), (_, kout, _) = await status_once(cl, "deploy/web")
    assert out.splitlines() == [kout.rstrip("\n"), "  rollout paused"]
    # Past its progress deadline: an error, exit 1, for both.
    deadline = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "web-h2" has timed out progressing.',
    }
    await cl.set_status(
        "deployments",
        "web",
        {**base, "observedGeneration": gen + 1, "conditions": [deadline]},
    )
    (rc, out, err), (krc, _, kerr) = await status_once(cl, "deploy/web")
    assert (rc, krc, out) == (1, 1, "")
    assert err == kerr == 'error: deployment "web" exceeded its progress deadline\n'


async def test_status_watch_follows_to_done(cl: Cluster) -> None:
    ds = await cl.create("daemonsets", rolling_ds("agent"))
    gen = ds["metadata"]["generation"]
    staged = ds_status(gen, desired=3)
    await cl.set_status("daemonsets", "agent", staged)
    run = Running()
    run.start(["--server", cl.url, "--token", TOKEN, "rollout", "status", "ds/agent"])
    waiting = 'Waiting for daemon set "agent" rollout to finish: '
    await wait_for(lambda: run.lines() == [f"{waiting}0 out of 3 new pods have been updated..."])
    for updated in (1, 2, 3):
        await cl.set_status("daemonsets", "agent", {**staged, "updatedNumberScheduled": updated})
        await wait_for(lambda u=updated: len(run.lines()) == u + 1)  # type: ignore[misc]
    await cl.set_status(
        "daemonsets", "agent", {**staged, "updatedNumberScheduled": 3, "numberAvailable": 3}
    )
    await wait_for(run.done.is_set)
    assert run.rc == 0 and run.err.getvalue() == ""
    assert run.lines() == [
        f"{waiting}0 out of 3 new pods have been updated...",
        f"{waiting}1 out of 3 new pods have been updated...",
        f"{waiting}2 out of 3 new pods have been updated...",
        f"{waiting}0 of 3 updated pods are available...",
        'daemon set "agent" successfully rolled out',
    ]


async def test_status_watch_ends_on_delete_timeout_and_not_found(cl: Cluster) -> None:
    await cl.create("deployments", deployment("web", replicas=2))
    run = Running()
    run.start(["--server", cl.url, "--token", TOKEN, "rollout", "status", "deploy/web"])
    await wait_for(lambda: run.lines() == ["Waiting for deployment spec update to be observed..."])
    code, _ = await cl.api.call("DELETE", f"{APPS}/deployments/web")
    assert code == 200
    await wait_for(run.done.is_set)
    assert run.rc == 1 and run.err.getvalue() == "error: object has been deleted\n"

    await cl.create("deployments", deployment("slow", replicas=2))
    rc, out, err = await cl.edgectl("rollout", "status", "deploy/slow", "--timeout", "300ms")
    assert rc == 1 and out == "Waiting for deployment spec update to be observed...\n"
    assert err == "error: timed out waiting for the condition\n"

    rc, out, err = await cl.edgectl("rollout", "status", "ds/ghost")
    krc, _, kerr = await cl.kubectl("rollout", "status", "ds/ghost")
    assert (rc, krc, out) == (1, 1, "")
    assert err.startswith("Error from server (NotFound)") and "ghost" in err
    assert kerr.startswith("Error from server (NotFound)")


async def test_usage_errors(cl: Cluster) -> None:
    for argv, words in [
        (["rollout", "status"], "required resource not specified"),
        (["rollout", "status", "ds"], "needs a NAME"),
        (["rollout", "status", "ds/a", "ds/b"], "exactly one resource"),
        (["rollout", "status", "ds/a", "--timeout", "soon"], "invalid duration"),
        (["set", "image", "ds/a"], "at least one image update is required"),
        (["set", "image", "app=busybox"], "one or more resources must be specified"),
        (["set", "image", "ds/a", "*=x", "app=y"], "already specified by *"),
        (["scale", "deploy/a", "--replicas", "-1"], "COUNT must be >= 0"),
    ]:
        rc, out, err = await cl.edgectl(*argv)
        assert (rc, out) == (2, ""), (argv, err)
        assert words in err, (argv, err)
    rc, _, err = await cl.edgectl("rollout", "history", "rs/x")
    assert rc == 1 and "rollout history is not supported for replicasets.apps" in err
    rc, _, err = await cl.edgectl("scale", "ds/x", "--replicas", "2")
    assert rc == 1 and "scale is not supported for daemonsets.apps" in err


# ---- history and undo -----------------------------------------------------------------


async def test_daemonset_history_and_undo_match_kubectl(cl: Cluster) -> None:
    # Twins: edgectl acts on one, kubectl on the other; both must end alike.
    for name in ("mine", "theirs"):
        ds = rolling_ds(name)
        ds["spec"]["template"] = template({"app": name}, "sensor:1.5")
        ds = await cl.create("daemonsets", ds)
        await cl.create("controllerrevisions", revision(ds, 1, "sensor:1.4", "first"))
        await cl.create("controllerrevisions", revision(ds, 2, "sensor:1.5"))
    # A revision another DaemonSet owns (same labels, other uid) is not history.
    stranger = revision(await cl.get("daemonsets", "mine"), 7, "other:1")
    stranger["metadata"]["name"] = "stranger"
    stranger["metadata"]["ownerReferences"][0]["uid"] = "not-the-uid"
    await cl.create("controllerrevisions", stranger)

    rc, out, _ = await cl.edgectl("rollout", "history", "ds/mine")
    _, kout, _ = await cl.kubectl("rollout", "history", "ds/theirs")
    assert rc == 0 and out == kout.replace("theirs", "mine")
    assert out.splitlines() == [
        "daemonset.apps/mine ",
        "REVISION  CHANGE-CAUSE",
        "1         first",
        "2         <none>",
        "",
    ]
    rc, out, _ = await cl.edgectl("rollout", "history", "ds/mine", "--revision", "1")
    _, kout, _ = await cl.kubectl("rollout", "history", "ds/theirs", "--revision=1")
    assert rc == 0 and out == kout.replace("theirs", "mine")
    assert "Image:\tsensor:1.4" in out
    rc, out, _ = await cl.edgectl("rollout", "history", "ds/mine", "--revision", "2", "-o", "json")
    assert rc == 0 and json.loads(out)["revision"] == 2
    rc, _, err = await cl.edgectl("rollout", "history", "ds/mine", "--revision", "9")
    krc, _, kerr = await cl.kubectl("rollout", "history", "ds/theirs", "--revision=9")
    assert (rc, krc) == (1, 1) and err == kerr == "error: unable to find the specified revision\n"

    rc, out, err = await cl.edgectl("rollout", "undo", "ds/mine")
    krc, kout, kerr = await cl.kubectl("rollout", "undo", "ds/theirs")
    assert (rc, krc, err, kerr) == (0, 0, "", "")
    assert out == kout.replace("theirs", "mine") == "daemonset.apps/mine rolled back\n"
    mine, theirs = await cl.get("daemonsets", "mine"), await cl.get("daemonsets", "theirs")
    assert mine["spec"]["template"]["spec"]["containers"][0]["image"] == "sensor:1.4"
    assert mine["spec"]["template"] == json.loads(
        json.dumps(theirs["spec"]["template"]).replace("theirs", "mine")
    )
    # Already at revision 1: skipped, nothing written. (kubectl compares the
    # revision's bytes with Go's encoding of the template, so it sees a
    # difference in key order and patches to the same template: no change.)
    rv = mine["metadata"]["resourceVersion"]
    rc, out, _ = await cl.edgectl("rollout", "undo", "ds/mine", "--to-revision", "1")
    krc, _, _ = await cl.kubectl("rollout", "undo", "ds/theirs", "--to-revision=1")
    assert (rc, krc) == (0, 0)
    assert (await cl.get("daemonsets", "theirs"))["spec"] == theirs["spec"]
    assert out == (
        "daemonset.apps/mine skipped rollback (current template already matches revision 1)\n"
    )
    assert (await cl.get("daemonsets", "mine"))["metadata"]["resourceVersion"] == rv
    rc, _, err = await cl.edgectl("rollout", "undo", "ds/mine", "--to-revision", "5")
    krc, _, kerr = await cl.kubectl("rollout", "undo", "ds/theirs", "--to-revision=5")
    assert (rc, krc) == (1, 1)
    assert err == kerr == "error: unable to find specified revision 5 in history\n"
    # No history at all.
    await cl.create("daemonsets", rolling_ds("fresh"))
    rc, out, _ = await cl.edgectl("rollout", "history", "ds/fresh")
    _, kout, _ = await cl.kubectl("rollout", "history", "ds/fresh")
    assert rc == 0 and out == kout == "daemonset.apps/fresh \nNo rollout history found.\n"
    rc, _, err = await cl.edgectl("rollout", "undo", "ds/fresh")
    krc, _, kerr = await cl.kubectl("rollout", "undo", "ds/fresh")
    assert (rc, krc) == (1, 1) and err == kerr == "error: no last revision to roll back to\n"


async def test_deployment_history_and_undo_match_kubectl(cl: Cluster) -> None:
    for name in ("mine", "theirs"):
        d = deployment(name, replicas=2)
        d["spec"]["template"] = template({"app": name}, "web:2")
        d["metadata"]["annotations"] = {REVISION: "2", "team": "edge"}
        d = await cl.create("deployments", d)
        await cl.create("replicasets", rs_of(d, 1, "web:1", "kubectl apply v1"))
        await cl.create("replicasets", rs_of(d, 2, "web:2"))
    rc, out, _ = await cl.edgectl("rollout", "history", "deploy/mine")
    _, kout, _ = await cl.kubectl("rollout", "history", "deploy/theirs")
    assert rc == 0 and out == kout.replace("theirs", "mine")
    assert out.splitlines()[1:] == [
        "REVISION  CHANGE-CAUSE",
        "1         kubectl apply v1",
        "2         <none>",
        "",
    ]
    rc, out, _ = await cl.edgectl("rollout", "history", "deploy/mine", "--revision", "1")
    _, kout, _ = await cl.kubectl("rollout", "history", "deploy/theirs", "--revision=1")
    assert rc == 0 and out == kout.replace("theirs", "mine")
    assert "pod-template-hash=h1" in out

    rc, out, _ = await cl.edgectl("rollout", "undo", "deploy/mine")
    krc, kout, kerr = await cl.kubectl("rollout", "undo", "deploy/theirs")
    assert (rc, krc) == (0, 0), kerr
    assert out == kout.replace("theirs", "mine") == "deployment.apps/mine rolled back\n"
    mine, theirs = await cl.get("deployments", "mine"), await cl.get("deployments", "theirs")
    assert mine["spec"]["template"] == template({"app": "mine"}, "web:1")
    assert mine["metadata"]["annotations"] == theirs["metadata"]["annotations"]
    assert mine["metadata"]["annotations"] == {REVISION: "2", CHANGE_CAUSE: "kubectl apply v1"}

    # Paused: refused, nothing written.
    await cl.bump("deployments", "mine", {"spec": {"paused": True}})
    rc, _, err = await cl.edgectl("rollout", "undo", "deploy/mine", "--to-revision", "2")
    assert rc == 1 and "you cannot rollback a paused deployment" in err
    assert (await cl.get("deployments", "mine"))["spec"]["template"]["spec"]["containers"][0][
        "image"
    ] == "web:1"
    rc, _, err = await cl.edgectl("rollout", "undo", "deploy/theirs", "--to-revision", "3")
    assert rc == 1 and err == "error: unable to find specified revision 3 in history\n"


# ---- pause, resume, restart -----------------------------------------------------------


async def test_pause_resume_restart(cl: Cluster) -> None:
    for name in ("mine", "theirs"):
        await cl.create("deployments", deployment(name, replicas=1))
    for verb, done in (("pause", "paused"), ("resume", "resumed")):
        rc, out, _ = await cl.edgectl("rollout", verb, "deploy/mine")
        krc, kout, _ = await cl.kubectl("rollout", verb, "deploy/theirs")
        assert (rc, krc) == (0, 0) and out == kout.replace("theirs", "mine")
        assert out == f"deployment.apps/mine {done}\n"
        mine, theirs = await cl.get("deployments", "mine"), await cl.get("deployments", "theirs")
        assert mine["spec"] == json.loads(json.dumps(theirs["spec"]).replace("theirs", "mine"))
        assert mine["spec"].get("paused") is (True if verb == "pause" else None)
    rc, _, err = await cl.edgectl("rollout", "resume", "deploy/mine")
    assert rc == 1 and err == 'error: deployments.apps "mine" is not paused\n'
    await cl.edgectl("rollout", "pause", "deploy/mine")
    rc, _, err = await cl.edgectl("rollout", "pause", "deploy/mine")
    assert rc == 1 and err == 'error: deployments.apps "mine" is already paused\n'
    rc, _, err = await cl.edgectl("rollout", "restart", "deploy/mine")
    assert rc == 1 and "can't restart paused deployment" in err

    rc, out, _ = await cl.edgectl("rollout", "restart", "deploy/theirs")
    assert rc == 0 and out == "deployment.apps/theirs restarted\n"
    stamp = (await cl.get("deployments", "theirs"))["spec"]["template"]["metadata"]["annotations"][
        RESTARTED_AT
    ]
    assert edgeproto.parse_rfc3339(stamp) is not None

    # DaemonSets: edgeflock's pause mark (kubectl cannot pause one).
    await cl.create("daemonsets", rolling_ds("agent"))
    rc, out, _ = await cl.edgectl("rollout", "pause", "ds/agent")
    assert rc == 0 and out == "daemonset.apps/agent paused\n"
    ds = await cl.get("daemonsets", "agent")
    assert ds["metadata"]["annotations"] == {DS_PAUSED: "true"}
    await cl.set_status(
        "daemonsets",
        "agent",
        ds_status(ds["metadata"]["generation"], desired=1),
    )
    rc, out, _ = await cl.edgectl("rollout", "status", "ds/agent", "--watch=false")
    assert out.splitlines()[1:] == ["  rollout paused"]
    krc, _, kerr = await cl.kubectl("rollout", "pause", "ds/agent")
    assert krc == 1 and "pausing is not supported" in kerr
    rc, out, err = await cl.edgectl("rollout", "resume", "daemonset/agent")
    assert (rc, out, err) == (0, "daemonset.apps/agent resumed\n", ""), err
    assert DS_PAUSED not in (
        (await cl.get("daemonsets", "agent"))["metadata"].get("annotations") or {}
    )
    rc, out, _ = await cl.edgectl("rollout", "restart", "ds/agent")
    assert rc == 0 and out == "daemonset.apps/agent restarted\n"


# ---- set image, scale -----------------------------------------------------------------


async def test_set_image_matches_kubectl(cl: Cluster) -> None:
    for name in ("mine", "theirs"):
        ds = rolling_ds(name)
        ds["spec"]["template"]["spec"]["containers"] = [
            {
                "name": "app",
                "image": "sensor:1.4",
                "command": ["/bin/sensor"],
                "env": [{"name": "A", "value": "1"}],
            },
            {"name": "sidecar", "image": "relay:1"},
        ]
        await cl.create("daemonsets", ds)
    rc, out, err = await cl.edgectl("set", "image", "ds/mine", "app=sensor:1.5")
    krc, kout, kerr = await cl.kubectl("set", "image", "ds/theirs", "app=sensor:1.5")
    assert (rc, krc, err, kerr) == (0, 0, "", "")
    assert out == kout.replace("theirs", "mine") == "daemonset.apps/mine image updated\n"
    mine, theirs = await cl.get("daemonsets", "mine"), await cl.get("daemonsets", "theirs")
    assert mine["spec"]["template"]["spec"] == theirs["spec"]["template"]["spec"]
    assert mine["spec"]["template"]["spec"]["containers"] == [
        {
            "name": "app",
            "image": "sensor:1.5",
            "command": ["/bin/sensor"],
            "env": [{"name": "A", "value": "1"}],
        },
        {"name": "sidecar", "image": "relay:1"},
    ]
    # Unchanged image: nothing to write, nothing printed (as kubectl).
    rv = mine["metadata"]["resourceVersion"]
    rc, out, _ = await cl.edgectl("set", "image", "ds/mine", "app=sensor:1.5")
    _, kout, _ = await cl.kubectl("set", "image", "ds/theirs", "app=sensor:1.5")
    assert (rc, out) == (0, kout)
    assert (await cl.get("daemonsets", "mine"))["metadata"]["resourceVersion"] == rv
    # Every container.
    rc, out, _ = await cl.edgectl("set", "image", "daemonset/mine", "*=x:2")
    images = [
        c["image"]
        for c in (await cl.get("daemonsets", "mine"))["spec"]["template"]["spec"]["containers"]
    ]
    assert rc == 0 and images == ["x:2", "x:2"]
    # A container that is not there: an error, the others still set.
    rc, out, err = await cl.edgectl("set", "image", "ds/mine", "nope=y:1", "app=y:1")
    krc, _, kerr = await cl.kubectl("set", "image", "ds/theirs", "nope=y:1")
    assert (rc, krc) == (1, 1) and 'error: unable to find container named "nope"' in kerr
    assert err == 'error: unable to find container named "nope"\n'
    assert out == "daemonset.apps/mine image updated\n"
    rc, _, err = await cl.edgectl("set", "image", "deploy/ghost", "app=y:1")
    assert rc == 1 and err.startswith("Error from server (NotFound)")


async def test_scale(cl: Cluster) -> None:
    for name in ("mine", "theirs"):
        await cl.create("deployments", deployment(name, replicas=3))
    await cl.create("replicasets", replicaset("loose", replicas=1))
    rc, out, err = await cl.edgectl("scale", "deploy/mine", "--replicas", "5")
    krc, kout, kerr = await cl.kubectl("scale", "deploy/theirs", "--replicas=5")
    assert (rc, krc, err) == (0, 0, ""), kerr
    assert out == kout.replace("theirs", "mine") == "deployment.apps/mine scaled\n"
    assert (await cl.get("deployments", "mine"))["spec"]["replicas"] == 5
    assert (await cl.get("deployments", "theirs"))["spec"]["replicas"] == 5
    rc, out, _ = await cl.edgectl("scale", "rs", "loose", "--replicas", "0")
    assert rc == 0 and out == "replicaset.apps/loose scaled\n"
    assert (await cl.get("replicasets", "loose"))["spec"]["replicas"] == 0
    rc, _, err = await cl.edgectl(
        "scale", "deploy/mine", "--replicas", "1", "--current-replicas", "4"
    )
    assert rc == 1 and err == "error: Expected replicas to be 4, was 5\n"
    assert (await cl.get("deployments", "mine"))["spec"]["replicas"] == 5
    rc, _, err = await cl.edgectl("scale", "deploy/ghost", "--replicas", "1")
    assert rc == 1 and err.startswith("Error from server (NotFound)")


# ---- get ------------------------------------------------------------------------------


def cells(out: str) -> list[list[str]]:
    """A table's rows split on runs of 2+ spaces (NODE SELECTOR is one header),
    the AGE column dropped (a second may pass between two clients' reads)."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if line.strip()]
    if not rows or "AGE" not in rows[0]:
        return rows
    i = rows[0].index("AGE")
    return [r[:i] + r[i + 1 :] for r in rows]


async def test_get_workloads_with_kubectls_columns(cl: Cluster) -> None:
    ds = rolling_ds("agent")
    ds["metadata"]["labels"] = {"app": "agent"}  # -l filters the object's own labels
    ds["spec"]["template"]["spec"]["nodeSelector"] = {"site": "a"}
    ds = await cl.create("daemonsets", ds)
    await cl.set_status("daemonsets", "agent", ds_status(1, desired=2, updated=1, available=1))
    d = await cl.create("deployments", deployment("web", replicas=3))
    await cl.create("replicasets", rs_of(d, 1, "web:1"))
    await cl.create("controllerrevisions", revision(ds, 1, "busybox:1.36"))
    heads = {
        "ds": ["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "NODE SELECTOR"],
        "deploy": ["NAME", "READY", "UP-TO-DATE", "AVAILABLE"],
        "rs": ["NAME", "DESIRED", "CURRENT", "READY"],
        "controllerrevisions": ["NAME", "CONTROLLER", "REVISION"],
    }
    for kind, head in heads.items():
        rc, out, err = await cl.edgectl("get", kind)
        krc, kout, kerr = await cl.kubectl("get", kind)
        assert (rc, krc, err) == (0, 0, ""), kerr
        assert cells(out) == cells(kout), kind
        assert cells(out)[0] == head, kind
        rc, out, _ = await cl.edgectl("get", kind, "-o", "wide")
        _, kout, _ = await cl.kubectl("get", kind, "-o", "wide")
        assert cells(out) == cells(kout), kind
    rc, out, _ = await cl.edgectl("get", "ds", "-o", "wide")
    assert cells(out)[1] == [
        "agent",
        "2",
        "2",
        "1",
        "1",
        "1",
        "site=a",
        "app",
        "busybox:1.36",
        "app=agent",
    ]
    rc, out, _ = await cl.edgectl("get", "ds", "-l", "app=other")
    assert rc == 0 and out == ""
    rc, out, _ = await cl.edgectl("get", "ds", "-l", "app=agent", "-o", "json")
    assert [i["metadata"]["name"] for i in json.loads(out)["items"]] == ["agent"]
    for kind in ("nodegroups", "ng", "edgeapplications", "edgeapp", "edgeapps"):
        rc, _, err = await cl.edgectl("get", kind)
        assert rc == 0 and err.startswith("No resources found"), (kind, err)


async def test_status_of_a_rollout_the_controller_paused(cl: Cluster) -> None:
    """The DaemonSet controller holds a rollout past its failure threshold and
    says why in the pause mark: rollout status shows it and ends with exit 1
    rather than wait for what will not come by itself."""
    ds = rolling_ds("agent")
    ds["metadata"]["annotations"] = {
        DS_PAUSED: "3 of 10 updated pods failed (ImagePullBackOff), max-failed 20%",
        DS_PENDING_OFFLINE: "pi-09,pi-02",
    }
    ds = await cl.create("daemonsets", ds)
    await cl.set_status("daemonsets", "agent", ds_status(1, desired=12, updated=10, available=7))
    for argv in (["--watch=false"], []):
        rc, out, err = await cl.edgectl("rollout", "status", "ds/agent", *argv)
        assert rc == 1
        assert out.splitlines() == [
            'Waiting for daemon set "agent" rollout to finish: 10 out of 12 new pods have been updated...',
            "  2 offline boards pending (updated when back online): pi-02, pi-09",
            "  rollout paused: 3 of 10 updated pods failed (ImagePullBackOff), max-failed 20%",
        ]
        assert err == (
            'error: daemonset "agent" rollout paused: 3 of 10 updated pods failed '
            "(ImagePullBackOff), max-failed 20% (edgectl rollout undo daemonsets/agent, or resume)\n"
        )
    rc, out, _ = await cl.edgectl("rollout", "resume", "ds/agent")
    assert rc == 0 and out == "daemonset.apps/agent resumed\n"
    rc, out, _ = await cl.edgectl("rollout", "status", "ds/agent", "--watch=false")
    assert rc == 0 and "paused" not in out


async def test_commands_through_a_whole_gateway(gateway: Gateway, tmp_path: Path) -> None:
    """The writing commands against the gateway as it runs (controllers
    included, once wired): they change the spec, which no controller reverts."""
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(
        json.dumps({"kind": "List", "items": [rolling_ds("agent"), deployment("web", 2)]})
    )
    rc, out, err = await gateway.edgectl("apply", "-f", str(manifest))
    assert (rc, err) == (0, ""), err
    assert out.splitlines() == ["daemonset/agent created", "deployment/web created"]
    rc, out, _ = await gateway.edgectl("set", "image", "ds/agent", "app=sensor:1.5")
    assert rc == 0 and out == "daemonset.apps/agent image updated\n"
    rc, out, _ = await gateway.edgectl("rollout", "pause", "deploy/web")
    assert rc == 0 and out == "deployment.apps/web paused\n"
    rc, out, _ = await gateway.edgectl("scale", "deploy/web", "--replicas", "4")
    assert rc == 0 and out == "deployment.apps/web scaled\n"
    rc, out, _ = await gateway.edgectl("rollout", "restart", "ds/agent")
    assert rc == 0 and out == "daemonset.apps/agent restarted\n"
    ds = (await gateway.store.get("daemonsets/default/agent")).value
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == "sensor:1.5"
    assert RESTARTED_AT in ds["spec"]["template"]["metadata"]["annotations"]
    web = (await gateway.store.get("deployments/default/web")).value
    assert web["spec"]["paused"] is True and web["spec"]["replicas"] == 4
