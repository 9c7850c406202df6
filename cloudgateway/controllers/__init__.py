"""Controllers the gateway's leader runs over the store: the runtime
(``_runtime.py``), garbage collection by ownerReferences (``_gc.py``), the
scheduler (``_scheduler.py``, ``_scheduling.py``; placement rules in
``_nodematch.py``), the workload controllers (DaemonSet: ``_daemonset.py``,
``_dsplan.py``, ``_revisions.py``; ReplicaSet and Deployment: ``_replicaset.py``,
``_deployment.py``, ``_rollout.py``, ``_pods.py``) and KubeEdge's node groups
(``_nodegroup*.py``, ``_edgeapp*.py``, ``_overriders.py``), and agent upgrades
(NodeUpgradeJob: ``_upgrade.py``, ``_upgrade_plan.py``)."""

from __future__ import annotations

from collections.abc import MutableMapping

import trio

from .._releases import Releases
from .._store import Store
from ._daemonset import DaemonSetController
from ._deployment import DeploymentController
from ._edgeapp import EdgeApplicationController
from ._gc import GarbageCollector, mark_for_deletion
from ._nodegroup import NodeGroupController
from ._replicaset import ReplicaSetController
from ._runtime import (
    Controller,
    Runtime,
    WorkQueue,
    controller_owner_key,
    owner_keys,
    run_controllers,
)
from ._scheduler import Scheduler
from ._upgrade import UpgradeJobController

__all__ = [
    "Controller",
    "DaemonSetController",
    "DeploymentController",
    "EdgeApplicationController",
    "GarbageCollector",
    "NodeGroupController",
    "ReplicaSetController",
    "Runtime",
    "Scheduler",
    "UpgradeJobController",
    "WorkQueue",
    "controller_owner_key",
    "fleet_controllers",
    "mark_for_deletion",
    "owner_keys",
    "run_controllers",
    "run_fleet_controllers",
]


def fleet_controllers(
    store: Store,
    *,
    releases: Releases | None = None,
    job_states: MutableMapping[str, str] | None = None,
) -> list[Controller]:
    """Every controller the gateway runs, each once, over ``store`` (the
    NodeUpgradeJob controller when the gateway keeps ``releases``)."""
    upgrades: list[Controller] = (
        [UpgradeJobController(store, releases, job_states=job_states)]
        if releases is not None
        else []
    )
    return [
        GarbageCollector(store),
        Scheduler(store),
        DaemonSetController(store),
        ReplicaSetController(store),
        DeploymentController(store),
        NodeGroupController(store),
        EdgeApplicationController(store),
        *upgrades,
    ]


async def run_fleet_controllers(
    store: Store,
    *,
    releases: Releases | None = None,
    job_states: MutableMapping[str, str] | None = None,
    task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``run_controllers`` with every fleet controller (one runtime, one subscription)."""
    controllers = fleet_controllers(store, releases=releases, job_states=job_states)
    await run_controllers(store, controllers, task_status=task_status)
