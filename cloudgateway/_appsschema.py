"""The schemas of the fleet workload kinds: apps/v1 DaemonSet, Deployment,
ReplicaSet and ControllerRevision after Kubernetes' OpenAPI, and KubeEdge's
apps.kubeedge.io/v1alpha1 NodeGroup and EdgeApplication after its Go types.
The pod template is the Pod's own spec schema, so a template is checked, merged
and applied exactly as a pod is. What a schema cannot say (a selector matching
its template's labels, percentages, an immutable selector) is checked in
``_appsvalidate.py``. Pure data, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._schemabase import (
    APPS,
    KUBEEDGE_APPS,
    META,
    OBJECT_META,
    POD_SPEC,
    TIME,
    Schema,
    array,
    boolean,
    integer,
    kind_schema,
    mapping,
    merged,
    obj,
    open_obj,
    string,
)

__all__ = [
    "APPS_KIND_SCHEMAS",
    "INT_OR_STRING",
    "LABEL_SELECTOR",
    "POD_TEMPLATE_SPEC",
    "SCALE",
]

INT_OR_STRING = Schema(
    description="A whole number or a percentage such as '25%'.",
    format="int-or-percent",
    name="io.k8s.apimachinery.pkg.util.intstr.IntOrString",
)

_REQUIREMENT = obj(
    "A label selector requirement: a key, an operator and values.",
    {
        "key": string("The label key the selector applies to.", format="qualified-name"),
        "operator": string(
            "In, NotIn, Exists or DoesNotExist.", enum=("In", "NotIn", "Exists", "DoesNotExist")
        ),
        "values": array(
            string("", format="label-value"),
            "Values for In and NotIn (at least one); empty for Exists and DoesNotExist.",
        ),
    },
    name=f"{META}.LabelSelectorRequirement",
    required=("key", "operator"),
)

LABEL_SELECTOR = obj(
    "A label query over objects: every matchLabels pair and every matchExpressions "
    "requirement must hold (they are ANDed). An empty selector matches everything.",
    {
        "matchLabels": mapping(
            string("", format="label-value"),
            "Labels an object must carry, key and value.",
            keys="qualified-name",
        ),
        "matchExpressions": array(_REQUIREMENT, "Requirements on labels."),
    },
    name=f"{META}.LabelSelector",
    message="Required value",
)

POD_TEMPLATE_SPEC = obj(
    "The pods a workload makes: their metadata (labels the selector must match) "
    "and spec (a Pod's).",
    {"metadata": OBJECT_META, "spec": POD_SPEC},
    name="io.k8s.api.core.v1.PodTemplateSpec",
    message="Required value",
)

_REVISION_HISTORY = integer(
    "Old revisions kept to allow rollback (default 10).", format="int32", minimum=0
)
_MIN_READY = integer(
    "Seconds a new pod must be ready, without a container crashing, to count as "
    "available (default 0).",
    format="int32",
    minimum=0,
)
_SELECTOR = LABEL_SELECTOR


def _conditions(kind: str, *, updated: bool = False) -> Schema:
    times = {"lastTransitionTime": TIME}
    if updated:  # only a Deployment's conditions say when they were last updated
        times["lastUpdateTime"] = TIME
    return merged(
        obj(
            f"A {kind}'s state at a point in time.",
            {
                "type": string("The condition's type.", message="Required value"),
                "status": string("True, False or Unknown.", message="Required value"),
                **times,
                "reason": string("Why, in CamelCase."),
                "message": string("Details, for people."),
            },
            name=f"{APPS}.{kind}Condition",
            required=("type", "status"),
        ),
        "type",
        "Observations of the current state.",
        unique=True,
    )


def _count(description: str) -> Schema:
    return integer(description, format="int32")


def _rolling(kind: str, surge: str, unavailable: str) -> Schema:
    return obj(
        f"How a rolling update proceeds. maxSurge: {surge} maxUnavailable: {unavailable}",
        {"maxSurge": INT_OR_STRING, "maxUnavailable": INT_OR_STRING},
        name=f"{APPS}.RollingUpdate{kind}",
    )


DAEMON_SET_SPEC = obj(
    "Which nodes run a pod of the DaemonSet, and how the pods are updated.",
    {
        "selector": _SELECTOR,
        "template": POD_TEMPLATE_SPEC,
        "updateStrategy": obj(
            "How pods are replaced when the template changes.",
            {
                "type": string(
                    "RollingUpdate (default) or OnDelete.", enum=("RollingUpdate", "OnDelete")
                ),
                "rollingUpdate": _rolling(
                    "DaemonSet",
                    "Nodes that may run an old and a new pod at once during the update "
                    "(a number or a percentage of the nodes; default 0).",
                    "Nodes whose pod may be unavailable during the update (a number or "
                    "a percentage of the nodes; default 1).",
                ),
            },
            name=f"{APPS}.DaemonSetUpdateStrategy",
        ),
        "minReadySeconds": _MIN_READY,
        "revisionHistoryLimit": _REVISION_HISTORY,
    },
    name=f"{APPS}.DaemonSetSpec",
    required=("selector", "template"),
)

DAEMON_SET_STATUS = obj(
    "What the DaemonSet controller observed last.",
    {
        "currentNumberScheduled": _count("Nodes running a pod of the DaemonSet that should."),
        "numberMisscheduled": _count("Nodes running a pod of the DaemonSet that should not."),
        "desiredNumberScheduled": _count("Nodes that should run a pod of the DaemonSet."),
        "numberReady": _count("Nodes whose pod of the DaemonSet is Ready."),
        "observedGeneration": integer("The generation observed.", format="int64"),
        "updatedNumberScheduled": _count("Nodes running the current template's pod."),
        "numberAvailable": _count("Nodes whose pod has been ready minReadySeconds."),
        "numberUnavailable": _count("Nodes that should run an available pod and do not."),
        "collisionCount": _count("Hash collisions of revision names."),
        "conditions": _conditions("DaemonSet"),
    },
    name=f"{APPS}.DaemonSetStatus",
    required=(
        "currentNumberScheduled",
        "numberMisscheduled",
        "desiredNumberScheduled",
        "numberReady",
    ),
)

DAEMON_SET = kind_schema(
    "DaemonSet",
    "A pod on every node its template places it on (node selector, affinity, tolerations).",
    {"spec": DAEMON_SET_SPEC, "status": DAEMON_SET_STATUS},
    required=("spec",),
)

DEPLOYMENT = kind_schema(
    "Deployment",
    "Replicas of a pod, rolled out through ReplicaSets.",
    {
        "spec": obj(
            "How many pods, which ones, and how they are replaced.",
            {
                "replicas": integer("How many pods (default 1).", format="int32", minimum=0),
                "selector": _SELECTOR,
                "template": POD_TEMPLATE_SPEC,
                "strategy": obj(
                    "How pods are replaced when the template changes.",
                    {
                        "type": string(
                            "RollingUpdate (default) or Recreate.",
                            enum=("Recreate", "RollingUpdate"),
                        ),
                        "rollingUpdate": _rolling(
                            "Deployment",
                            "Pods that may exist above replicas during the update (a "
                            "number or a percentage of replicas; default 25%).",
                            "Pods that may be unavailable during the update (a number or "
                            "a percentage of replicas; default 25%).",
                        ),
                    },
                    name=f"{APPS}.DeploymentStrategy",
                ),
                "minReadySeconds": _MIN_READY,
                "revisionHistoryLimit": _REVISION_HISTORY,
                "paused": boolean("The rollout is paused: template changes wait."),
                "progressDeadlineSeconds": integer(
                    "Seconds a rollout may make no progress before it is reported "
                    "failed (default 600).",
                    format="int32",
                    minimum=0,
                ),
            },
            name=f"{APPS}.DeploymentSpec",
            required=("selector", "template"),
        ),
        "status": obj(
            "What the Deployment controller observed last.",
            {
                "observedGeneration": integer("The generation observed.", format="int64"),
                "replicas": _count("Pods targeted by the Deployment."),
                "updatedReplicas": _count("Pods of the current template."),
                "readyReplicas": _count("Pods Ready."),
                "availableReplicas": _count("Pods ready minReadySeconds."),
                "unavailableReplicas": _count("Pods still needed for 100% availability."),
                "terminatingReplicas": _count("Pods being terminated."),
                "conditions": _conditions("Deployment", updated=True),
                "collisionCount": _count("Hash collisions of ReplicaSet names."),
            },
            name=f"{APPS}.DeploymentStatus",
        ),
    },
    required=("spec",),
)

REPLICA_SET = kind_schema(
    "ReplicaSet",
    "A number of pods from one template (usually owned by a Deployment).",
    {
        "spec": obj(
            "How many pods, and which ones.",
            {
                "replicas": integer("How many pods (default 1).", format="int32", minimum=0),
                "minReadySeconds": _MIN_READY,
                "selector": _SELECTOR,
                "template": POD_TEMPLATE_SPEC,
            },
            name=f"{APPS}.ReplicaSetSpec",
            required=("selector", "template"),
        ),
        "status": obj(
            "What the ReplicaSet controller observed last.",
            {
                "replicas": _count("Pods the ReplicaSet has."),
                "fullyLabeledReplicas": _count("Pods whose labels match the template's."),
                "readyReplicas": _count("Pods Ready."),
                "availableReplicas": _count("Pods ready minReadySeconds."),
                "terminatingReplicas": _count("Pods being terminated."),
                "observedGeneration": integer("The generation observed.", format="int64"),
                "conditions": _conditions("ReplicaSet"),
            },
            name=f"{APPS}.ReplicaSetStatus",
            required=("replicas",),
        ),
    },
)

CONTROLLER_REVISION = kind_schema(
    "ControllerRevision",
    "An immutable snapshot of a workload's template (a DaemonSet's history, "
    "what rollout undo goes back to).",
    {
        "data": Schema(description="The serialized state: any object.", open=True),
        "revision": integer("The revision's number.", format="int64", minimum=0),
    },
    required=("revision",),
)

_NODE_GROUP_SPEC = obj(
    "The nodes in the group: those named, and those carrying every label of matchLabels.",
    {
        "nodes": array(string("", format="dns-subdomain"), "Node names in the group."),
        "matchLabels": mapping(
            string("", format="label-value"),
            "Labels selecting nodes into the group.",
            keys="qualified-name",
        ),
        "topologyEnabled": boolean(
            "Members also get the label topology.kubernetes.io/zone: <group>."
        ),
    },
    name=f"{KUBEEDGE_APPS}.NodeGroupSpec",
)

NODE_GROUP = kind_schema(
    "NodeGroup",
    "A group of nodes (KubeEdge apps.kubeedge.io/v1alpha1), by name or by labels.",
    {
        "spec": _NODE_GROUP_SPEC,
        "status": obj(
            "The nodes selected into the group and whether each is ready.",
            {
                "nodeStatuses": array(
                    obj(
                        "A node selected into the group.",
                        {
                            "nodeName": string("The node."),
                            "readyStatus": string(
                                "Ready, NotReady or Unknown.",
                                enum=("Ready", "NotReady", "Unknown"),
                            ),
                            "selectionStatus": string(
                                "Succeeded or Failed.", enum=("Succeeded", "Failed")
                            ),
                            "selectionStatusReason": string("Why the selection failed."),
                        },
                        name=f"{KUBEEDGE_APPS}.NodeStatus",
                        required=("nodeName", "readyStatus", "selectionStatus"),
                    ),
                    "One per node selected.",
                ),
            },
            name=f"{KUBEEDGE_APPS}.NodeGroupStatus",
        ),
    },
)

_ADD_REMOVE = ("add", "remove")
_ADD_REMOVE_REPLACE = ("add", "remove", "replace")


def _container_overrider(
    name: str, what: str, value: Schema, operators: tuple[str, ...] | None
) -> Schema:
    props: dict[str, Schema] = {
        "containerName": string("The container.", format="non-empty"),
        "value": value,
    }
    if operators is not None:
        props["operator"] = string(" or ".join(operators) + ".", enum=operators)
    return obj(
        f"A change to one container's {what}.",
        props,
        name=f"{KUBEEDGE_APPS}.{name}",
        required=("containerName", "operator") if operators is not None else ("containerName",),
    )


_COMMAND_ARGS = _container_overrider(
    "CommandArgsOverrider",
    "command or arguments",
    array(string(""), "Words appended (add) or deleted (remove)."),
    _ADD_REMOVE,
)

_OVERRIDERS = obj(
    "What changes in the group's copy of each manifest.",
    {
        "replicas": integer("The group's replicas (a Deployment's).", minimum=0),
        "imageOverriders": array(
            obj(
                "A change to one component of an image: [registry/]repository[:tag].",
                {
                    "predicate": obj(
                        "Which image: the field path of one (e.g. "
                        "/spec/template/spec/containers/0/image); every container's if absent.",
                        {"path": string("A JSON pointer.", format="non-empty")},
                        name=f"{KUBEEDGE_APPS}.ImagePredicate",
                        required=("path",),
                    ),
                    "component": string(
                        "Registry, Repository or Tag.", enum=("Registry", "Repository", "Tag")
                    ),
                    "operator": string("add, remove or replace.", enum=_ADD_REMOVE_REPLACE),
                    "value": string("The new value (not empty for add and replace)."),
                },
                name=f"{KUBEEDGE_APPS}.ImageOverrider",
                required=("component", "operator"),
            ),
            "Image changes.",
        ),
        "envOverriders": array(
            _container_overrider(
                "EnvOverrider",
                "environment",
                array(open_obj("An environment variable (a core/v1 EnvVar)."), "Variables."),
                _ADD_REMOVE_REPLACE,
            ),
            "Environment changes.",
        ),
        "commandOverriders": array(_COMMAND_ARGS, "Command changes."),
        "argsOverriders": array(_COMMAND_ARGS, "Argument changes."),
        "resourcesOverriders": array(
            _container_overrider(
                "ResourcesOverrider",
                "resources",
                open_obj(
                    "Requests and limits (a core/v1 ResourceRequirements) that replace "
                    "the container's."
                ),
                None,
            ),
            "Resource changes.",
        ),
    },
    name=f"{KUBEEDGE_APPS}.Overriders",
)

EDGE_APPLICATION = kind_schema(
    "EdgeApplication",
    "Workload manifests deployed once per node group, each group's copy changed "
    "by its overriders (KubeEdge apps.kubeedge.io/v1alpha1).",
    {
        "spec": obj(
            "The manifests and where they go.",
            {
                "workloadTemplate": obj(
                    "The workloads.",
                    {
                        "manifests": array(
                            Schema(description="A workload object.", type="object", open=True),
                            "The manifests (Deployments, ...), kept as given.",
                        )
                    },
                    name=f"{KUBEEDGE_APPS}.ResourceTemplate",
                ),
                "workloadScope": obj(
                    "The node groups the workloads go to.",
                    {
                        "targetNodeGroups": array(
                            obj(
                                "A node group and its overriders.",
                                {
                                    "name": string(
                                        "The NodeGroup.",
                                        format="non-empty",
                                        message="Required value",
                                    ),
                                    "overriders": _OVERRIDERS,
                                },
                                name=f"{KUBEEDGE_APPS}.TargetNodeGroup",
                                required=("name",),
                            ),
                            "Node groups.",
                        ),
                        "targetNodeLabels": array(
                            obj(
                                "Nodes by a label selector, and their overriders.",
                                {"labelSelector": LABEL_SELECTOR, "overriders": _OVERRIDERS},
                                name=f"{KUBEEDGE_APPS}.TargetNodeLabel",
                            ),
                            "Label selectors.",
                        ),
                    },
                    name=f"{KUBEEDGE_APPS}.WorkloadScope",
                ),
            },
            name=f"{KUBEEDGE_APPS}.EdgeApplicationSpec",
            required=("workloadScope",),
        ),
        "status": obj(
            "The state of each workload made.",
            {
                "workloadStatus": array(
                    obj(
                        "A workload made from a manifest, and its state.",
                        {
                            "identifier": obj(
                                "Which workload: the manifest's index and its identity.",
                                {
                                    "ordinal": integer("The manifest's index.", minimum=0),
                                    "group": string(""),
                                    "version": string(""),
                                    "kind": string(""),
                                    "resource": string(""),
                                    "namespace": string(""),
                                    "name": string(""),
                                },
                                name=f"{KUBEEDGE_APPS}.ResourceIdentifier",
                                required=("ordinal",),
                            ),
                            "conditions": string(
                                "Processing or Available.", enum=("Processing", "Available")
                            ),
                        },
                        name=f"{KUBEEDGE_APPS}.ManifestStatus",
                        required=("identifier",),
                    ),
                    "One per workload.",
                ),
                "conditions": _conditions("EdgeApplication"),  # edgeflock's ManifestsApplied
            },
            name=f"{KUBEEDGE_APPS}.EdgeApplicationStatus",
        ),
    },
    required=("spec",),
)

SCALE = obj(
    "The scale subresource of a Deployment or ReplicaSet (autoscaling/v1): "
    "what kubectl scale reads and writes.",
    {
        "apiVersion": string("autoscaling/v1."),
        "kind": string("Scale."),
        "metadata": OBJECT_META,
        "spec": obj(
            "The replicas wanted.",
            {"replicas": integer("How many pods.", format="int32", minimum=0)},
            name="io.k8s.api.autoscaling.v1.ScaleSpec",
        ),
        "status": obj(
            "The replicas there are.",
            {
                "replicas": integer("Pods the workload has.", format="int32"),
                "selector": string("The workload's selector, as a label selector string."),
            },
            name="io.k8s.api.autoscaling.v1.ScaleStatus",
            required=("replicas",),
        ),
    },
    name="io.k8s.api.autoscaling.v1.Scale",
)

APPS_KIND_SCHEMAS: Mapping[str, Schema] = {
    "DaemonSet": DAEMON_SET,
    "Deployment": DEPLOYMENT,
    "ReplicaSet": REPLICA_SET,
    "ControllerRevision": CONTROLLER_REVISION,
    "NodeGroup": NODE_GROUP,
    "EdgeApplication": EDGE_APPLICATION,
}
