"""Controllers the gateway's leader runs over the store: the runtime
(``_runtime.py``), garbage collection by ownerReferences (``_gc.py``) and the
workload controllers."""

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
    "Runtime",
    "WorkQueue",
    "controller_owner_key",
    "owner_keys",
    "run_controllers",
]
