"""The building blocks of the API's schemas (``_apischema``): the ``Schema``
node, constructors for its shapes, and the types several kinds share —
object metadata, label selectors, the pod spec (a Pod's, and the template of
every workload that makes pods). Pure data, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import edgeproto


@dataclass(frozen=True, slots=True, kw_only=True)
class Schema:
    type: str | None = None  # object | array | string | integer | number | boolean; None: any
    description: str = ""
    properties: Mapping[str, Schema] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    items: Schema | None = None
    values: Schema | None = None  # a map's values (additionalProperties)
    keys: str | None = None  # the format of a map's keys
    format: str | None = None  # a named check (_validate.FORMATS)
    enum: tuple[str, ...] = ()
    minimum: int | None = None
    max_length: int | None = None
    min_items: int = 0
    open: bool = False  # undescribed fields are kept as they are
    merge_key: str | None = None  # a list of objects merged by this key
    merge: bool = False  # a merged list (with merge_key) or a set of values (without)
    retain_keys: bool = False  # each element's keys may be pruned with $retainKeys
    unique: bool = False  # no two elements share the merge key
    name: str | None = None  # the type's name in OpenAPI documents
    message: str | None = None  # what a missing or empty required value is called


def obj(
    description: str,
    properties: Mapping[str, Schema] | None = None,
    *,
    name: str | None = None,
    required: tuple[str, ...] = (),
    open: bool = False,
    message: str | None = None,
) -> Schema:
    return Schema(
        type="object",
        description=description,
        properties=properties or {},
        required=required,
        open=open,
        name=name,
        message=message,
    )


def string(description: str, **kw: Any) -> Schema:
    return Schema(type="string", description=description, **kw)


def integer(description: str, **kw: Any) -> Schema:
    return Schema(type="integer", description=description, **kw)


def boolean(description: str) -> Schema:
    return Schema(type="boolean", description=description)


def array(items: Schema, description: str, **kw: Any) -> Schema:
    return Schema(type="array", items=items, description=description, **kw)


def merged(items: Schema, key: str, description: str, **kw: Any) -> Schema:
    return array(items, description, merge=True, merge_key=key, **kw)


def mapping(values: Schema, description: str, keys: str | None = None) -> Schema:
    return Schema(type="object", values=values, keys=keys, description=description)


def open_obj(
    description: str,
    properties: Mapping[str, Schema] | None = None,
    *,
    name: str | None = None,
    required: tuple[str, ...] = (),
) -> Schema:
    return obj(description, properties, name=name, required=required, open=True)


ANY = Schema(description="any JSON value")
STRINGS = array(string(""), "a list of strings")
TIME = string("a time, RFC 3339 in UTC", format="date-time")

CORE = "io.k8s.api.core.v1"
META = "io.k8s.apimachinery.pkg.apis.meta.v1"
DEVICES = "io.kubeedge.devices.v1beta1"
APPS = "io.k8s.api.apps.v1"
KUBEEDGE_APPS = "io.kubeedge.apps.v1alpha1"
_TYPE_PREFIX = {
    "": CORE,
    "devices.kubeedge.io": DEVICES,
    "apps": APPS,
    "apps.kubeedge.io": KUBEEDGE_APPS,
    "operations.kubeedge.io": "io.kubeedge.operations.v1alpha1",
}

OBJECT_META = obj(
    "Standard object metadata: name, namespace, labels, annotations and what the "
    "server records (uid, resourceVersion, creationTimestamp).",
    {
        "name": string("Name, unique within a namespace: a DNS-1123 subdomain."),
        "generateName": string("A prefix the server completes to a unique name."),
        "namespace": string("The namespace (a DNS-1123 label); default: default."),
        "labels": mapping(
            string("", format="label-value"),
            "Labels select objects (label selectors, node placement).",
            keys="qualified-name",
        ),
        "annotations": mapping(
            string(""), "Non-identifying data for tools and people.", keys="qualified-name"
        ),
        "uid": string("Set by the server: unique in time and space."),
        "resourceVersion": string("Set by the server: the store revision of the last write."),
        "generation": integer("Set by the server: how many times the spec changed."),
        "creationTimestamp": TIME,
        "deletionTimestamp": TIME,
        "deletionGracePeriodSeconds": integer("Seconds allowed for graceful termination."),
        "finalizers": array(string(""), "Must be empty before the object is deleted.", merge=True),
        "ownerReferences": merged(
            open_obj("An owner of this object."), "uid", "Objects this object depends on."
        ),
        "managedFields": array(open_obj("A field manager's entry."), "Which manager set what."),
        "selfLink": string("Deprecated; not set."),
    },
    name=f"{META}.ObjectMeta",
)

KIND = string("The kind of the object, in CamelCase.")
API_VERSION = string("The versioned schema of this representation of an object.")

_ENV_VAR = obj(
    "An environment variable of a container.",
    {
        "name": string(
            "The variable's name (no '=').", format="env-name", message="name is required"
        ),
        "value": string("Its value; $(VAR) references are expanded."),
        "valueFrom": open_obj("Where the value comes from (a ConfigMap or Secret key, ...)."),
    },
    name=f"{CORE}.EnvVar",
    required=("name",),
)

_PORT = obj(
    "A port a container listens on.",
    {
        "containerPort": integer("The port number, 1-65535.", format="port"),
        "hostPort": integer("A host port to map (not mapped by edgeflock).", format="port"),
        "hostIP": string("The host address to bind a host port to."),
        "name": string("A name for the port (an IANA service name)."),
        "protocol": string("TCP (default), UDP or SCTP.", enum=("TCP", "UDP", "SCTP")),
    },
    name=f"{CORE}.ContainerPort",
    required=("containerPort",),
)

CONTAINER = open_obj(
    "A single application container that runs within a pod. Fields not listed "
    "here (resources, probes, securityContext, ...) are kept as they are.",
    {
        "name": string(
            "The container's name, unique in the pod: a DNS-1123 label.", format="dns-label"
        ),
        "image": string("The container image.", format="image", message="image is required"),
        "command": array(string(""), "The entrypoint; the image's if not given."),
        "args": array(string(""), "Arguments to the entrypoint."),
        "workingDir": string("The working directory."),
        "env": merged(_ENV_VAR, "name", "Environment variables."),
        "envFrom": array(open_obj("A ConfigMap or Secret to take variables from."), "Sources."),
        "ports": merged(_PORT, "containerPort", "Ports the container listens on."),
        "volumeMounts": merged(
            open_obj("A volume mounted into the container."), "mountPath", "Volume mounts."
        ),
        "volumeDevices": merged(
            open_obj("A block device mapped into the container."), "devicePath", "Devices."
        ),
        "imagePullPolicy": string(
            "Always, Never or IfNotPresent.", enum=("Always", "Never", "IfNotPresent")
        ),
    },
    name=f"{CORE}.Container",
    required=("name", "image"),
)

_VOLUME = open_obj(
    "A named volume the pod's containers can mount (configMap, secret, emptyDir, "
    "hostPath, projected, ...).",
    {"name": string("The volume's name: a DNS-1123 label.", format="dns-label")},
    name=f"{CORE}.Volume",
    required=("name",),
)

POD_SPEC = open_obj(
    "What a pod runs and where. Fields not listed here are kept as they are.",
    {
        "nodeName": string("The node (board) the pod runs on.", format="node-name"),
        "restartPolicy": string(
            "Always (default), OnFailure or Never.", enum=("Always", "OnFailure", "Never")
        ),
        "containers": merged(
            CONTAINER,
            "name",
            "The pod's containers: at least one.",
            unique=True,
            min_items=1,
            message="at least one container is required",
        ),
        "initContainers": merged(
            CONTAINER, "name", "Containers run to completion before the others.", unique=True
        ),
        "ephemeralContainers": merged(open_obj("A debugging container."), "name", "Not run."),
        "volumes": merged(
            _VOLUME, "name", "Volumes the containers can mount.", unique=True, retain_keys=True
        ),
        "imagePullSecrets": merged(
            open_obj("A Secret's name."), "name", "Secrets for pulling images."
        ),
        "hostAliases": merged(open_obj("Entries for /etc/hosts."), "ip", "Host aliases."),
        "topologySpreadConstraints": merged(
            open_obj("A spreading rule."), "topologyKey", "Spreading rules."
        ),
        "schedulingGates": merged(open_obj("A scheduling gate."), "name", "Scheduling gates."),
        "resourceClaims": merged(
            open_obj("A resource claim."), "name", "Resource claims.", retain_keys=True
        ),
        "tolerations": array(open_obj("A toleration of a taint."), "Taints this pod tolerates."),
        "nodeSelector": mapping(string(""), "Labels the pod's node must have."),
        "hostNetwork": boolean("Run in the host's network namespace."),
    },
    name=f"{CORE}.PodSpec",
    required=("containers",),
)

CONDITIONS = merged(open_obj("A condition: type, status, reason, message."), "type", "Conditions.")

POD_STATUS = open_obj(
    "What the node reports about the pod.",
    {
        "phase": string("Pending, Running, Succeeded, Failed or Unknown."),
        "conditions": CONDITIONS,
        "podIPs": merged(open_obj("An address."), "ip", "The pod's addresses."),
        "hostIPs": merged(open_obj("An address."), "ip", "The node's addresses."),
        "resourceClaimStatuses": merged(open_obj("A claim's status."), "name", "Claims."),
        "containerStatuses": array(
            open_obj(
                "A container's state.",
                {
                    "volumeMounts": merged(open_obj("A mount."), "mountPath", "Mounts."),
                    "allocatedResourcesStatus": merged(open_obj("A status."), "name", "Status."),
                },
            ),
            "One per container.",
        ),
    },
    name=f"{CORE}.PodStatus",
)


def kind_schema(
    kind: str,
    description: str,
    properties: Mapping[str, Schema],
    *,
    required: tuple[str, ...] = (),
) -> Schema:
    r = edgeproto.resource_by_kind(kind)
    return obj(
        description,
        {"apiVersion": API_VERSION, "kind": KIND, "metadata": OBJECT_META, **properties},
        name=f"{_TYPE_PREFIX[r.group]}.{kind}",
        required=required,
    )
