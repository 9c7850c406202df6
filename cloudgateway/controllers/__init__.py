"""Controllers the gateway's leader runs over the store: the runtime
(``_runtime.py``), garbage collection by ownerReferences (``_gc.py``) and the
workload controllers (``_daemonset.py``; placement in ``_nodematch.py``)."""

from ._daemonset import DaemonSetController
from ._gc import GarbageCollector, mark_for_deletion
from ._runtime import (
    Controller,
    Runtime,
    WorkQueue,
    controller_owner_key,
    owner_keys,
    run_controllers,
)

__all__ = [
    "Controller",
    "DaemonSetController",
    "GarbageCollector",
    "Runtime",
    "WorkQueue",
    "controller_owner_key",
    "mark_for_deletion",
    "owner_keys",
    "run_controllers",
]
