"""Controllers the gateway's leader runs over the store: the runtime
(``_runtime.py``), garbage collection by ownerReferences (``_gc.py``) and the
workload controllers."""

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
    "GarbageCollector",
    "Runtime",
    "WorkQueue",
    "controller_owner_key",
    "mark_for_deletion",
    "owner_keys",
    "run_controllers",
]
