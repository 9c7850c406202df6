"""The Deployment controller with the ReplicaSet controller and the scheduler
on a real SQLite store, run by the controller runtime, and boards simulated at
the store: each online board reports the pods bound to it Running and Ready
(or, for an image it cannot pull, ErrImagePull), as its status reports would
through the hub. Covers rollout arithmetic (pure), rolling update within
maxSurge/maxUnavailable, Recreate, scale, pause/resume, undo as kubectl does
it, revisionHistoryLimit, the progress deadline, an offline board that does
not stall a rollout, the failure threshold, and a restart mid-rollout."""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

import edgeproto
from cloudgateway._store import NotFound, SqliteBackend, Store
from cloudgateway.controllers import run_controllers
from cloudgateway.controllers._deployment import DeploymentController
from cloudgateway.controllers._replicaset import ReplicaSetController
from cloudgateway.controllers._rollout import (
    RSView,
    failure_threshold,
    new_rs_replicas,
    old_scale_down,
    proportional_scale,
    same_template,
    scaled_value,
    surge_and_unavailable,
    template_hash,
)
from cloudgateway.controllers._scheduler import Scheduler
from tests.cloudgateway.apps_fixtures import deployment
from tests.cloudgateway.test_scheduler import node
from tests.conftest import wait_for

DKEY = "deployments/default/web"

# ---- pure arithmetic ------------------------------------------------------------------


def test_surge_rounds_up_unavailable_down() -> None:
    assert scaled_value("25%", 3, True, "25%") == 1
    assert scaled_value("25%", 3, False, "25%") == 0
    assert scaled_value(2, 3, False, "25%") == 2
    assert scaled_value("bad", 4, True, "25%") == 1
    d = deployment(replicas=10)
    assert surge_and_unavailable(d) == (3, 2)
    d["spec"]["strategy"] = {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}
    assert surge_and_unavailable(d) == (0, 1)  # both 0: one may be unavailable
    d["spec"]["strategy"] = {"type": "Recreate"}
    assert surge_and_unavailable(d) == (0, 10)


def test_failure_threshold_annotation() -> None:
    d = deployment(replicas=10)
    assert failure_threshold(d, 10) == 2.5  # 25 % by default, exact
    d["metadata"]["annotations"] = {"edgeflock.io/max-failed": "10%"}
    assert failure_threshold(d, 3) == pytest.approx(0.3)
    d["metadata"]["annotations"] = {"edgeflock.io/max-failed": "3"}
    assert failure_threshold(d, 10) == 3
    d["metadata"]["annotations"] = {"edgeflock.io/max-failed": "lots"}
    assert failure_threshold(d, 10) == 2.5


def test_hash_is_stable_and_templates_compare_without_it() -> None:
    t = deployment()["spec"]["template"]
    assert template_hash(t) == template_hash(json.loads(json.dumps(t)))
    assert template_hash(t) != template_hash(t, 1)
    with_hash = json.loads(json.dumps(t))
    with_hash["metadata"]["labels"]["pod-template-hash"] = template_hash(t)
    assert same_template(with_hash, t)
    with_hash["spec"]["containers"][0]["image"] = "other"
    assert not same_template(with_hash, t)


def view(name: str, replicas: int, avail: int) -> RSView:
    return RSView(f"replicasets/default/{name}", {}, 1, 1, replicas, pods=replicas, available=avail)


def test_rolling_steps_as_kubernetes_takes_them() -> None:
    # 3 replicas, surge 1, unavailable 0.
    assert new_rs_replicas(3, 1, 3, 0) == 1
    assert new_rs_replicas(3, 1, 4, 1) == 1  # at the surge limit
    new, old = view("new", 1, 0), view("old", 3, 3)
    assert old_scale_down(3, 0, new, [old]) == {}  # the new pod is not available yet
    new.available = 1
    assert old_scale_down(3, 0, new, [old]) == {old.key: 2}
    # Unhealthy old pods go first, within the budget: all pods asked for, less
    # the minimum available, less the new ones not available yet.
    new, old = view("new", 1, 0), view("old", 3, 1)
    assert old_scale_down(3, 0, new, [old]) == {}
    assert old_scale_down(3, 1, new, [old]) == {old.key: 2}
    assert old_scale_down(3, 2, new, [old]) == {old.key: 1}
    # An old pod on an offline board, presumed running, counts as available.
    new, old = view("new", 1, 1), view("old", 3, 2)
    old.offline_unconfirmed = 1
    assert old_scale_down(3, 0, new, [old]) == {old.key: 2}


def test_proportional_scaling_mid_rollout() -> None:
    def v(name: str, size: int) -> RSView:
        return RSView(f"replicasets/default/{name}", {}, 1, 1, size)

    new, old = v("new", 2), v("old", 2)  # 3 replicas, surge 1, mid-rollout
    assert proportional_scale(6, 2, [old, new], [new, old]) == {new.key: 4, old.key: 4}
    new, old = v("new", 1), v("old", 2)
    # Shares by size, the rounding leftover to the largest.
    assert proportional_scale(10, 3, [old, new], [new, old]) == {old.key: 9, new.key: 4}
    new, old = v("new", 3), v("old", 1)
    assert proportional_scale(2, 1, [old, new], [new, old]) == {new.key: 2}
    assert proportional_scale(0, 0, [old, new], [new, old]) == {new.key: 0, old.key: 0}


# ---- controllers on a real store ------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    backend = SqliteBackend(str(tmp_path / "s.db"), node_of=edgeproto.owner_node)
    try:
        yield Store(backend)
    finally:
        backend.close()


class Boards:
    """Simulated boards at the store: every pod bound to an online board is
    reported Running/Ready (image ``bad:*``: waiting, ErrImagePull), once,
    as a board's status report would write it. Offline boards report nothing."""

    def __init__(self, store: Store, names: list[str]) -> None:
        self.store = store
        self.online = set(names)
        self.reported: dict[str, int] = {}
        self.hold = False  # True: pods are seen but not reported (a slow image pull)
        self.held: set[str] = set()

    async def release(self) -> None:
        self.hold = False
        for key in sorted(self.held):
            self.held.discard(key)
            with contextlib.suppress(NotFound):
                await self._see(key, (await self.store.get(key)).value)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.store.subscribe() as sub:
            recs, _ = await self.store.list("pods/")
            task_status.started()
            for r in recs:
                await self._see(r.key, r.value)
            async for ev in sub:
                if ev.type != "DELETED" and ev.key.startswith("pods/"):
                    await self._see(ev.key, ev.record.value)

    async def _see(self, key: str, pod: dict[str, Any]) -> None:
        node_name = pod.get("spec", {}).get("nodeName")
        if node_name not in self.online or key in self.reported:
            return
        if self.hold:
            self.held.add(key)
            return
        self.reported[key] = 1
        image = pod["spec"]["containers"][0]["image"]
        now = edgeproto.rfc3339(time.time())
        if image.startswith("bad"):
            waiting = {"waiting": {"reason": "ErrImagePull", "message": "not found"}}
            status = {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}],
                      "containerStatuses": [{"name": "app", "ready": False, "state": waiting,
                                             "restartCount": 0, "image": image}]}  # fmt: skip
        else:
            status = {"phase": "Running",
                      "conditions": [{"type": "Ready", "status": "True",
                                      "lastTransitionTime": now}],
                      "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0,
                                             "state": {"running": {}}, "image": image}]}  # fmt: skip
        try:
            await self.store.modify(key, lambda rec: status, status=True)
        except Exception:
            self.reported.pop(key, None)

    async def go_offline(self, name: str) -> None:
        self.online.discard(name)
        await self.store.modify(
            f"nodes//{name}",
            lambda rec: {**rec.value["status"],
                         "conditions": [{"type": "Ready", "status": "Unknown"}]},
            status=True,
        )  # fmt: skip


async def start(
    nursery: trio.Nursery, store: Store, nodes: list[str], *, controllers: bool = True
) -> Boards:
    for n in nodes:
        await store.create(f"nodes//{n}", node(n))
    boards = Boards(store, nodes)
    await nursery.start(boards.run)
    if controllers:
        await start_controllers(nursery, store)
    return boards


async def start_controllers(nursery: trio.Nursery, store: Store) -> None:
    await nursery.start(
        functools.partial(run_controllers, resync=5),
        store,
        [Scheduler(store), ReplicaSetController(store), DeploymentController(store)],
    )


async def dstatus(store: Store) -> dict[str, Any]:
    return dict((await store.get(DKEY)).value.get("status") or {})


async def pods(store: Store) -> list[dict[str, Any]]:
    recs, _ = await store.list("pods/default/")
    return [r.value for r in recs]


async def replicasets(store: Store) -> dict[str, dict[str, Any]]:
    recs, _ = await store.list("replicasets/default/")
    return {r.key.rsplit("/", 1)[1]: r.value for r in recs}


def images(ps: list[dict[str, Any]]) -> list[str]:
    return sorted(p["spec"]["containers"][0]["image"] for p in ps)


async def rolled_out(store: Store, replicas: int, image: str) -> bool:
    """What ``kubectl rollout status`` waits for, and the pods to match."""
    d = (await store.get(DKEY)).value
    st = d.get("status") or {}
    ok = (
        st.get("observedGeneration", 0) >= d["metadata"]["generation"]
        and st.get("updatedReplicas") == replicas
        and st.get("replicas") == replicas
        and st.get("availableReplicas") == replicas
    )
    return ok and images(await pods(store)) == [image] * replicas


async def patch_spec(store: Store, **spec: Any) -> None:
    def edit(rec: Any) -> Any:
        obj = json.loads(json.dumps(rec.value))
        obj["spec"].update(spec)
        return obj

    await store.modify(DKEY, edit)


async def set_image(store: Store, image: str) -> None:
    def edit(rec: Any) -> Any:
        obj = json.loads(json.dumps(rec.value))
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = image
        return obj

    await store.modify(DKEY, edit)


async def undo(store: Store, to_revision: int = 0) -> None:
    """What ``kubectl rollout undo`` does: the template of the ReplicaSet of
    that revision (the previous one by default), its hash label removed, and
    its annotations, patched into the Deployment."""
    rss = sorted(
        (await replicasets(store)).values(),
        key=lambda r: int(r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]),
    )
    target = rss[-2] if not to_revision else next(
        r for r in rss
        if r["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == str(to_revision)
    )  # fmt: skip
    template = json.loads(json.dumps(target["spec"]["template"]))
    template["metadata"]["labels"].pop("pod-template-hash")

    def edit(rec: Any) -> Any:
        obj = json.loads(json.dumps(rec.value))
        obj["spec"]["template"] = template
        return obj

    await store.modify(DKEY, edit)


def web(replicas: int = 3, image: str = "app:1", **spec: Any) -> dict[str, Any]:
    d = deployment("web", replicas, {"app": "web"})
    d["metadata"]["namespace"] = "default"
    d["spec"]["template"]["spec"]["containers"][0]["image"] = image
    d["spec"].update(spec)
    return d


async def test_rollout_spreads_updates_scales_and_cleans_history(
    nursery: trio.Nursery, store: Store
) -> None:
    await start(nursery, store, ["n1", "n2", "n3", "n4"])
    await store.create(DKEY, web(3, revisionHistoryLimit=1))
    await wait_for(lambda: rolled_out(store, 3, "app:1"))
    ps = await pods(store)
    assert len({p["spec"]["nodeName"] for p in ps}) == 3  # spread
    (rs1,) = (await replicasets(store)).values()
    h = rs1["metadata"]["labels"]["pod-template-hash"]
    assert rs1["metadata"]["name"] == f"web-{h}"
    assert rs1["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    assert all(p["metadata"]["labels"]["pod-template-hash"] == h for p in ps)
    st = await dstatus(store)
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Available"]["status"] == "True"
    assert conds["Progressing"]["reason"] == "NewReplicaSetAvailable"

    # Rolling update: never more than replicas + surge pods, never fewer available
    # than replicas - maxUnavailable (1 and 0 for 3 replicas).
    await set_image(store, "app:2")
    most = 0

    async def watch_bounds() -> bool:
        nonlocal most
        ps = await pods(store)
        most = max(most, len(ps))
        return await rolled_out(store, 3, "app:2")

    await wait_for(watch_bounds)
    assert most <= 4
    rss = await replicasets(store)
    assert len(rss) == 2  # revisionHistoryLimit 1: one old kept
    revs = sorted(r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                  for r in rss.values())  # fmt: skip
    assert revs == ["1", "2"]
    d = (await store.get(DKEY)).value
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"

    # A third revision prunes the first.
    await set_image(store, "app:3")
    await wait_for(lambda: rolled_out(store, 3, "app:3"))
    revs = sorted(r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                  for r in (await replicasets(store)).values())  # fmt: skip
    assert revs == ["2", "3"]

    # Undo (as kubectl does it): revision 2's ReplicaSet comes back as revision 4.
    await undo(store)
    await wait_for(lambda: rolled_out(store, 3, "app:2"))
    back = next(r for r in (await replicasets(store)).values()
                if r["spec"]["template"]["spec"]["containers"][0]["image"] == "app:2")  # fmt: skip
    ann = back["metadata"]["annotations"]
    assert ann["deployment.kubernetes.io/revision"] == "4"
    assert ann["deployment.kubernetes.io/revision-history"] == "2"

    # Scale up and down (the scale subresource writes spec.replicas).
    await patch_spec(store, replicas=5)
    await wait_for(lambda: rolled_out(store, 5, "app:2"))
    await patch_spec(store, replicas=2)
    await wait_for(lambda: rolled_out(store, 2, "app:2"))


async def test_recreate_stops_every_old_pod_first(nursery: trio.Nursery, store: Store) -> None:
    await start(nursery, store, ["n1", "n2"])
    await store.create(DKEY, web(2, strategy={"type": "Recreate"}))
    await wait_for(lambda: rolled_out(store, 2, "app:1"))
    await set_image(store, "app:2")
    mixed = False

    async def check() -> bool:
        nonlocal mixed
        ps = await pods(store)
        mixed = mixed or len(set(images(ps))) > 1
        return await rolled_out(store, 2, "app:2")

    await wait_for(check)
    assert not mixed


async def test_pause_holds_the_template_resume_rolls_it(
    nursery: trio.Nursery, store: Store
) -> None:
    await start(nursery, store, ["n1", "n2"])
    await store.create(DKEY, web(2))
    await wait_for(lambda: rolled_out(store, 2, "app:1"))
    await patch_spec(store, paused=True)

    async def paused_cond() -> bool:
        st = await dstatus(store)
        return any(c["reason"] == "DeploymentPaused" for c in st.get("conditions", []))

    await wait_for(paused_cond)
    await set_image(store, "app:2")
    await wait_for(lambda: _observed(store))
    assert len(await replicasets(store)) == 1 and images(await pods(store)) == ["app:1"] * 2
    await patch_spec(store, replicas=3)  # scaling works while paused
    await wait_for(lambda: _count(store, 3))
    assert images(await pods(store)) == ["app:1"] * 3
    await patch_spec(store, paused=False)
    await wait_for(lambda: rolled_out(store, 3, "app:2"))


async def test_scaled_in_the_middle_of_a_rollout(nursery: trio.Nursery, store: Store) -> None:
    """A scale while two ReplicaSets are active shares the change between them
    (proportional scaling); the rollout then finishes at the new size."""
    boards = await start(nursery, store, ["n1", "n2", "n3"])
    await store.create(DKEY, web(4))
    await wait_for(lambda: rolled_out(store, 4, "app:1"))
    boards.hold = True
    await set_image(store, "app:2")

    async def two_active() -> bool:
        rss = await replicasets(store)
        return sum(1 for r in rss.values() if r["spec"]["replicas"] > 0) == 2

    await wait_for(two_active)
    await patch_spec(store, replicas=8)

    async def shared() -> dict[str, int] | None:
        rss = await replicasets(store)
        sizes = {r["spec"]["template"]["spec"]["containers"][0]["image"]: r["spec"]["replicas"]
                 for r in rss.values()}  # fmt: skip
        return sizes if sum(sizes.values()) == 10 else None  # 8 + surge 2

    sizes = await wait_for(shared)
    assert sizes["app:1"] > 4 and sizes["app:2"] > 1  # both grew
    await boards.release()
    await wait_for(lambda: rolled_out(store, 8, "app:2"))


async def _observed(store: Store) -> bool:
    d = (await store.get(DKEY)).value
    return bool(d.get("status", {}).get("observedGeneration") == d["metadata"]["generation"])


async def _count(store: Store, n: int) -> bool:
    return len(await pods(store)) == n and (await dstatus(store)).get("availableReplicas") == n


async def test_an_offline_board_does_not_stall_the_rollout(
    nursery: trio.Nursery, store: Store
) -> None:
    boards = await start(nursery, store, ["n1", "n2", "n3", "n4"])
    await store.create(DKEY, web(3))
    await wait_for(lambda: rolled_out(store, 3, "app:1"))
    victim = (await pods(store))[0]
    await boards.go_offline(victim["spec"]["nodeName"])
    st = await wait_for(lambda: _with(dstatus(store), lambda s: s.get("offlineReplicas") == 1))
    assert st["availableReplicas"] == 3  # presumed running: edge autonomy
    # The pod on the offline node is neither evicted nor replaced.
    assert victim["metadata"]["name"] in {p["metadata"]["name"] for p in await pods(store)}
    assert len(await pods(store)) == 3
    await set_image(store, "app:2")
    await wait_for(lambda: rolled_out(store, 3, "app:2"))
    ps = await pods(store)
    assert victim["spec"]["nodeName"] not in {p["spec"]["nodeName"] for p in ps}


async def test_failure_threshold_pauses_resume_accepts_new_template_lifts(
    nursery: trio.Nursery, store: Store
) -> None:
    await start(nursery, store, ["n1", "n2", "n3", "n4"])
    d = web(4, strategy={"rollingUpdate": {"maxSurge": 2, "maxUnavailable": 0}})
    d["metadata"]["annotations"] = {"edgeflock.io/max-failed": "1"}
    await store.create(DKEY, d)
    await wait_for(lambda: rolled_out(store, 4, "app:1"))
    await set_image(store, "bad:1")

    async def stopped() -> dict[str, Any] | None:
        rec = await store.get(DKEY)
        prog = {c["type"]: c for c in rec.value.get("status", {}).get("conditions", [])}
        p = prog.get("Progressing", {})
        if rec.value["spec"].get("paused") and p.get("reason") == "FailureThresholdExceeded":
            return dict(p)
        return None

    cond = await wait_for(stopped)
    assert cond["status"] == "False"
    assert (
        "2 updated pod(s) failed, more than max-failed 1 allows: 2 ErrImagePull"
        in (cond["message"])
    ), cond
    # Old pods keep serving: maxUnavailable 0 held.
    assert images(await pods(store)).count("app:1") == 4
    # A new template lifts the pause by itself and rolls out.
    await set_image(store, "app:2")
    await wait_for(lambda: rolled_out(store, 4, "app:2"))
    assert not (await store.get(DKEY)).value["spec"].get("paused")
    # Again bad: paused; this time resume accepts the failures (no pause again).
    await set_image(store, "bad:2")
    await wait_for(stopped)
    await patch_spec(store, paused=False)

    async def accepted() -> bool:
        rss = await replicasets(store)
        return any(
            r["metadata"].get("annotations", {}).get("edgeflock.io/failures-accepted")
            for r in rss.values()
        )

    await wait_for(accepted)
    assert not (await store.get(DKEY)).value["spec"].get("paused")


async def test_progress_deadline_exceeded(nursery: trio.Nursery, store: Store) -> None:
    boards = await start(nursery, store, ["n1"])
    boards.hold = True  # the pod never comes up
    await store.create(DKEY, web(1, progressDeadlineSeconds=1))

    async def timed_out() -> bool:
        st = await dstatus(store)
        return any(c["reason"] == "ProgressDeadlineExceeded" and c["status"] == "False"
                   for c in st.get("conditions", []))  # fmt: skip

    await wait_for(timed_out)


async def test_restart_mid_rollout_continues_from_the_store(
    nursery: trio.Nursery, store: Store
) -> None:
    """The controllers stopped in the middle of a rollout (a gateway restart,
    or a new leader) and fresh ones started: the rollout finishes from what
    the store holds."""
    boards = await start(nursery, store, ["n1", "n2", "n3"], controllers=False)
    async with trio.open_nursery() as first:
        await start_controllers(first, store)
        await store.create(DKEY, web(3))
        await wait_for(lambda: rolled_out(store, 3, "app:1"))
        boards.hold = True  # the new pods do not come up yet: the rollout stays mid-way
        await set_image(store, "app:2")
        await wait_for(lambda: _with(pods(store), lambda ps: "app:2" in images(ps)))
        first.cancel_scope.cancel()
    assert len(await replicasets(store)) == 2
    assert images(await pods(store)).count("app:1") == 3  # maxUnavailable 0: all old kept
    await start_controllers(nursery, store)
    await boards.release()
    await wait_for(lambda: rolled_out(store, 3, "app:2"))


async def _with(coro: Any, pred: Any) -> Any:
    got = await coro
    return got if pred(got) else None
