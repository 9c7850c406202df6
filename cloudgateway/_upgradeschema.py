"""KubeEdge's ``operations.kubeedge.io/v1alpha1`` NodeUpgradeJob, as edgeflock
runs it: its schema, what the schema cannot say (checked with Kubernetes'
field paths and words) and its defaults. Pure data and functions, no I/O.

spec (KubeEdge's names): ``version`` (required), ``nodeNames`` or
``labelSelector`` (exactly one), ``concurrency`` (1), ``timeoutSeconds`` (per
node, hand-out to healthy: 3600), ``failureTolerate`` (a ratio as text,
``"0.1"``, or a percentage, ``"10%"``: ``"0.1"``); edgeflock's additions:
``healthTimeoutSeconds`` (the new agent's trial: 300), ``activeDeadlineSeconds``
(the whole job, for boards that stay offline: 7 days) and ``suspend`` (true:
aborted, nothing more is handed out).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Final

from edgeproto.upgrade import MAX_VERSION, NodeState, UpgradeError, check_version

from ._appsschema import LABEL_SELECTOR
from ._schemabase import (
    Schema,
    array,
    boolean,
    integer,
    kind_schema,
    obj,
    string,
)

__all__ = [
    "DEFAULTS",
    "JOB_STATES",
    "NODE_UPGRADE_JOB",
    "OPERATIONS",
    "check_nodeupgradejob",
    "check_nodeupgradejob_update",
    "failure_tolerance",
]

OPERATIONS = "io.kubeedge.operations.v1alpha1"
JOB_STATES: Final = ("upgrading", "completed", "failed", "aborted")
DEFAULTS: Final[dict[str, Any]] = {
    "concurrency": 1,
    "timeoutSeconds": 3600,
    "failureTolerate": "0.1",
    "healthTimeoutSeconds": 300,
    "activeDeadlineSeconds": 7 * 24 * 3600,
}
MAX_HEALTH_TIMEOUT = 86400  # what an assignment may carry (edgeproto.upgrade)
_RATIO = re.compile(r"(?:0|1|0?\.[0-9]+|1\.0*)")
_PERCENT = re.compile(r"([0-9]{1,3}(?:\.[0-9]+)?)%")

_NODE_STATUS = obj(
    "Where one targeted board is in the job.",
    {
        "nodeName": string("The node."),
        "state": string(
            "pending, downloading, installing, switched, healthy, rolledBack or failed.",
            enum=tuple(s.value for s in NodeState),
        ),
        "reason": string("Why it failed or rolled back; progress text otherwise."),
        "time": string("When it reached the state (RFC 3339)."),
        "startTime": string("When the job was handed to it (RFC 3339)."),
        "release": string("The sha256 of the release handed to it (for its architecture)."),
    },
    name=f"{OPERATIONS}.NodeUpgradeStatus",
    required=("nodeName", "state"),
)

NODE_UPGRADE_JOB = kind_schema(
    "NodeUpgradeJob",
    "An upgrade of the edgeflock agent on a set of boards (KubeEdge's "
    "operations.kubeedge.io/v1alpha1 NodeUpgradeJob), run by the gateway's controller.",
    {
        "spec": obj(
            "What to upgrade to, where, how many at once and how many failures to tolerate.",
            {
                "version": string(
                    "The edgeflock version to install (a release of it must have been pushed).",
                    max_length=MAX_VERSION,
                ),
                "nodeNames": array(
                    string("", format="dns-subdomain"), "The boards to upgrade, by name."
                ),
                "labelSelector": LABEL_SELECTOR,
                "concurrency": integer(
                    "Boards upgrading at once (offline boards take no slot); default 1.",
                    minimum=1,
                ),
                "timeoutSeconds": integer(
                    "Seconds one board has from hand-out to healthy; default 3600.", minimum=1
                ),
                "failureTolerate": string(
                    "The share of boards that may fail or roll back before the job stops: "
                    "a ratio ('0.1') or a percentage ('10%'); default '0.1'."
                ),
                "healthTimeoutSeconds": integer(
                    "Seconds the new agent has to reconnect and resync before the board "
                    "rolls back; default 300.",
                    minimum=1,
                ),
                "activeDeadlineSeconds": integer(
                    "Seconds the job runs at most (boards offline until then fail); "
                    "default 604800 (7 days).",
                    minimum=1,
                ),
                "suspend": boolean("True: the job is aborted; nothing more is handed out."),
            },
            name=f"{OPERATIONS}.NodeUpgradeJobSpec",
            required=("version",),
        ),
        "status": obj(
            "The job's progress, written by the gateway's controller and the boards' reports.",
            {
                "state": string("upgrading, completed, failed or aborted.", enum=JOB_STATES),
                "reason": string("Why the job ended as it did."),
                "startTime": string("When the job started (RFC 3339)."),
                "completionTime": string("When it ended (RFC 3339)."),
                "nodeStatus": array(_NODE_STATUS, "One entry per targeted board, fixed at start."),
            },
            name=f"{OPERATIONS}.NodeUpgradeJobStatus",
        ),
    },
    required=("spec",),
)

Problem = tuple[str, str, str]  # field, reason, message (as _appsvalidate)


def _shown(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def failure_tolerance(text: Any) -> float | None:
    """A failureTolerate value as a ratio in [0, 1]: ``"0.1"``, ``"10%"``;
    None if it is neither."""
    if not isinstance(text, str):
        return None
    t = text.strip()
    if _RATIO.fullmatch(t):
        value = float(t)
    elif m := _PERCENT.fullmatch(t):
        value = float(m.group(1)) / 100
    else:
        return None
    return value if 0.0 <= value <= 1.0 else None


def check_nodeupgradejob(job: dict[str, Any]) -> Iterator[Problem]:
    """What a NodeUpgradeJob's schema cannot say; fills in the defaults."""
    spec = job.get("spec")
    if not isinstance(spec, dict):
        return
    for k, v in DEFAULTS.items():
        spec.setdefault(k, v)
    version = spec.get("version")
    if isinstance(version, str):
        try:
            check_version(version)
        except UpgradeError:
            yield (
                "spec.version",
                "FieldValueInvalid",
                f"Invalid value: {_shown(version)}: must be a release version "
                "(letters, digits, '.', '+', '_', '-'; starting with a letter or digit)",
            )
    names, selector = spec.get("nodeNames"), spec.get("labelSelector")
    if not names and not selector:
        yield (
            "spec",
            "FieldValueRequired",
            "Required value: one of nodeNames or labelSelector must be given",
        )
    elif names and selector:
        yield (
            "spec",
            "FieldValueForbidden",
            "Forbidden: nodeNames and labelSelector are exclusive: give one of them",
        )
    if isinstance(names, list):
        seen: set[Any] = set()
        for i, n in enumerate(names):
            if isinstance(n, str) and n in seen:
                yield f"spec.nodeNames[{i}]", "FieldValueDuplicate", f"Duplicate value: {_shown(n)}"
            seen.add(n)
    if isinstance(selector, dict):
        if not selector.get("matchLabels") and not selector.get("matchExpressions"):
            yield (
                "spec.labelSelector",
                "FieldValueInvalid",
                f"Invalid value: {_shown(selector)}: an empty selector would select every node",
            )
        expressions = selector.get("matchExpressions")
        for i, req in enumerate(expressions if isinstance(expressions, list) else []):
            if not isinstance(req, dict):
                continue
            op, values = req.get("operator"), req.get("values")
            where = f"spec.labelSelector.matchExpressions[{i}].values"
            if op in ("In", "NotIn") and not values:
                yield (
                    where,
                    "FieldValueRequired",
                    "Required value: must be specified when `operator` is 'In' or 'NotIn'",
                )
            elif op in ("Exists", "DoesNotExist") and values:
                yield (
                    where,
                    "FieldValueForbidden",
                    "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                )
    tolerate = spec.get("failureTolerate")
    if isinstance(tolerate, str) and failure_tolerance(tolerate) is None:
        yield (
            "spec.failureTolerate",
            "FieldValueInvalid",
            f"Invalid value: {_shown(tolerate)}: must be a ratio between 0 and 1 ('0.1') "
            "or a percentage ('10%')",
        )
    health = spec.get("healthTimeoutSeconds")
    if isinstance(health, int) and not isinstance(health, bool) and health > MAX_HEALTH_TIMEOUT:
        yield (
            "spec.healthTimeoutSeconds",
            "FieldValueInvalid",
            f"Invalid value: {health}: must be at most {MAX_HEALTH_TIMEOUT}",
        )


def check_nodeupgradejob_update(old: dict[str, Any], new: dict[str, Any]) -> Iterator[Problem]:
    """What a job targets and installs is fixed once it exists (suspend,
    concurrency, timeouts and the tolerance may change)."""
    before, after = old.get("spec"), new.get("spec")
    before = before if isinstance(before, dict) else {}
    after = after if isinstance(after, dict) else {}
    for field in ("version", "nodeNames", "labelSelector"):
        if before.get(field) != after.get(field):
            yield (
                f"spec.{field}",
                "FieldValueInvalid",
                f"Invalid value: {_shown(after.get(field))}: field is immutable",
            )


def _schemas() -> dict[str, Schema]:
    return {"NodeUpgradeJob": NODE_UPGRADE_JOB}


UPGRADE_KIND_SCHEMAS: Final = _schemas()
