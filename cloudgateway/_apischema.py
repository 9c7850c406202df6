"""The schemas of the kinds the API serves, written once. The validator walks
them (``_validate.py``), the OpenAPI documents are generated from them
(``_openapi.py``: what kubectl validates and explains with), and strategic merge
patch reads its merge keys from them (``_patch.py``).

A schema is a tree of ``Schema`` nodes in OpenAPI's terms (type, properties,
items, required, enum, format) plus Kubernetes' patch extensions (merge keys,
set-like lists, retainKeys) and ``open``: an object whose other fields are kept
as they are (``x-kubernetes-preserve-unknown-fields``), for the parts of big
Kubernetes types edgeflock passes through without describing each field.
A closed object's undescribed fields are unknown: dropped, warned about or
refused, as the request's ``fieldValidation`` says. Pure data, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

import edgeproto

__all__ = ["KIND_SCHEMAS", "Schema", "named_schemas"]


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


def _obj(
    description: str,
    properties: Mapping[str, Schema] | None = None,
    *,
    name: str | None = None,
    required: tuple[str, ...] = (),
    open: bool = False,
) -> Schema:
    return Schema(
        type="object",
        description=description,
        properties=properties or {},
        required=required,
        open=open,
        name=name,
    )


def _str(description: str, **kw: Any) -> Schema:
    return Schema(type="string", description=description, **kw)


def _int(description: str, **kw: Any) -> Schema:
    return Schema(type="integer", description=description, **kw)


def _bool(description: str) -> Schema:
    return Schema(type="boolean", description=description)


def _list(items: Schema, description: str, **kw: Any) -> Schema:
    return Schema(type="array", items=items, description=description, **kw)


def _merged(items: Schema, key: str, description: str, **kw: Any) -> Schema:
    return _list(items, description, merge=True, merge_key=key, **kw)


def _map(values: Schema, description: str, keys: str | None = None) -> Schema:
    return Schema(type="object", values=values, keys=keys, description=description)


def _open(
    description: str,
    properties: Mapping[str, Schema] | None = None,
    *,
    name: str | None = None,
    required: tuple[str, ...] = (),
) -> Schema:
    return _obj(description, properties, name=name, required=required, open=True)


_ANY = Schema(description="any JSON value")
_STRINGS = _list(_str(""), "a list of strings")
_TIME = _str("a time, RFC 3339 in UTC", format="date-time")

CORE = "io.k8s.api.core.v1"
META = "io.k8s.apimachinery.pkg.apis.meta.v1"
DEVICES = "io.kubeedge.devices.v1beta1"

OBJECT_META = _obj(
    "Standard object metadata: name, namespace, labels, annotations and what the "
    "server records (uid, resourceVersion, creationTimestamp).",
    {
        "name": _str("Name, unique within a namespace: a DNS-1123 subdomain."),
        "generateName": _str("A prefix the server completes to a unique name."),
        "namespace": _str("The namespace (a DNS-1123 label); default: default."),
        "labels": _map(
            _str("", format="label-value"),
            "Labels select objects (label selectors, node placement).",
            keys="qualified-name",
        ),
        "annotations": _map(
            _str(""), "Non-identifying data for tools and people.", keys="qualified-name"
        ),
        "uid": _str("Set by the server: unique in time and space."),
        "resourceVersion": _str("Set by the server: the store revision of the last write."),
        "generation": _int("Set by the server: how many times the spec changed."),
        "creationTimestamp": _TIME,
        "deletionTimestamp": _TIME,
        "deletionGracePeriodSeconds": _int("Seconds allowed for graceful termination."),
        "finalizers": _list(_str(""), "Must be empty before the object is deleted.", merge=True),
        "ownerReferences": _merged(
            _open("An owner of this object."), "uid", "Objects this object depends on."
        ),
        "managedFields": _list(_open("A field manager's entry."), "Which manager set what."),
        "selfLink": _str("Deprecated; not set."),
    },
    name=f"{META}.ObjectMeta",
)

_KIND = _str("The kind of the object, in CamelCase.")
_API_VERSION = _str("The versioned schema of this representation of an object.")

_ENV_VAR = _obj(
    "An environment variable of a container.",
    {
        "name": _str(
            "The variable's name (no '=').", format="env-name", message="name is required"
        ),
        "value": _str("Its value; $(VAR) references are expanded."),
        "valueFrom": _open("Where the value comes from (a ConfigMap or Secret key, ...)."),
    },
    name=f"{CORE}.EnvVar",
    required=("name",),
)

_PORT = _obj(
    "A port a container listens on.",
    {
        "containerPort": _int("The port number, 1-65535.", format="port"),
        "hostPort": _int("A host port to map (not mapped by edgeflock).", format="port"),
        "hostIP": _str("The host address to bind a host port to."),
        "name": _str("A name for the port (an IANA service name)."),
        "protocol": _str("TCP (default), UDP or SCTP.", enum=("TCP", "UDP", "SCTP")),
    },
    name=f"{CORE}.ContainerPort",
    required=("containerPort",),
)

CONTAINER = _open(
    "A single application container that runs within a pod. Fields not listed "
    "here (resources, probes, securityContext, ...) are kept as they are.",
    {
        "name": _str(
            "The container's name, unique in the pod: a DNS-1123 label.", format="dns-label"
        ),
        "image": _str("The container image.", format="image", message="image is required"),
        "command": _list(_str(""), "The entrypoint; the image's if not given."),
        "args": _list(_str(""), "Arguments to the entrypoint."),
        "workingDir": _str("The working directory."),
        "env": _merged(_ENV_VAR, "name", "Environment variables."),
        "envFrom": _list(_open("A ConfigMap or Secret to take variables from."), "Sources."),
        "ports": _merged(_PORT, "containerPort", "Ports the container listens on."),
        "volumeMounts": _merged(
            _open("A volume mounted into the container."), "mountPath", "Volume mounts."
        ),
        "volumeDevices": _merged(
            _open("A block device mapped into the container."), "devicePath", "Devices."
        ),
        "imagePullPolicy": _str(
            "Always, Never or IfNotPresent.", enum=("Always", "Never", "IfNotPresent")
        ),
    },
    name=f"{CORE}.Container",
    required=("name", "image"),
)

_VOLUME = _open(
    "A named volume the pod's containers can mount (configMap, secret, emptyDir, "
    "hostPath, projected, ...).",
    {"name": _str("The volume's name: a DNS-1123 label.", format="dns-label")},
    name=f"{CORE}.Volume",
    required=("name",),
)

POD_SPEC = _open(
    "What a pod runs and where. Fields not listed here are kept as they are.",
    {
        "nodeName": _str("The node (board) the pod runs on.", format="node-name"),
        "restartPolicy": _str(
            "Always (default), OnFailure or Never.", enum=("Always", "OnFailure", "Never")
        ),
        "containers": _merged(
            CONTAINER,
            "name",
            "The pod's containers: at least one.",
            unique=True,
            min_items=1,
            message="at least one container is required",
        ),
        "initContainers": _merged(
            CONTAINER, "name", "Containers run to completion before the others.", unique=True
        ),
        "ephemeralContainers": _merged(_open("A debugging container."), "name", "Not run."),
        "volumes": _merged(
            _VOLUME, "name", "Volumes the containers can mount.", unique=True, retain_keys=True
        ),
        "imagePullSecrets": _merged(
            _open("A Secret's name."), "name", "Secrets for pulling images."
        ),
        "hostAliases": _merged(_open("Entries for /etc/hosts."), "ip", "Host aliases."),
        "topologySpreadConstraints": _merged(
            _open("A spreading rule."), "topologyKey", "Spreading rules."
        ),
        "schedulingGates": _merged(_open("A scheduling gate."), "name", "Scheduling gates."),
        "resourceClaims": _merged(
            _open("A resource claim."), "name", "Resource claims.", retain_keys=True
        ),
        "tolerations": _list(_open("A toleration of a taint."), "Taints this pod tolerates."),
        "nodeSelector": _map(_str(""), "Labels the pod's node must have."),
        "hostNetwork": _bool("Run in the host's network namespace."),
    },
    name=f"{CORE}.PodSpec",
    required=("containers",),
)

_CONDITIONS = _merged(_open("A condition: type, status, reason, message."), "type", "Conditions.")

POD_STATUS = _open(
    "What the node reports about the pod.",
    {
        "phase": _str("Pending, Running, Succeeded, Failed or Unknown."),
        "conditions": _CONDITIONS,
        "podIPs": _merged(_open("An address."), "ip", "The pod's addresses."),
        "hostIPs": _merged(_open("An address."), "ip", "The node's addresses."),
        "resourceClaimStatuses": _merged(_open("A claim's status."), "name", "Claims."),
        "containerStatuses": _list(
            _open(
                "A container's state.",
                {
                    "volumeMounts": _merged(_open("A mount."), "mountPath", "Mounts."),
                    "allocatedResourcesStatus": _merged(_open("A status."), "name", "Status."),
                },
            ),
            "One per container.",
        ),
    },
    name=f"{CORE}.PodStatus",
)


def _kind(
    kind: str,
    description: str,
    properties: Mapping[str, Schema],
    *,
    required: tuple[str, ...] = (),
) -> Schema:
    r = edgeproto.resource_by_kind(kind)
    return _obj(
        description,
        {"apiVersion": _API_VERSION, "kind": _KIND, "metadata": OBJECT_META, **properties},
        name=f"{DEVICES if r.group else CORE}.{kind}",
        required=required,
    )


POD = _kind(
    "Pod",
    "A group of containers that run together on one node (board).",
    {"spec": POD_SPEC, "status": POD_STATUS},
    required=("spec",),
)

NODE = _kind(
    "Node",
    "A board running the edgeflock agent.",
    {
        "spec": _open(
            "The node's spec.",
            {
                "unschedulable": _bool("No new pods are placed here."),
                "podCIDRs": _list(_str(""), "Pod address ranges.", merge=True),
                "taints": _list(_open("A taint."), "Taints repel pods that do not tolerate them."),
            },
            name=f"{CORE}.NodeSpec",
        ),
        "status": _open(
            "What the node reports (the gateway owns the Ready condition).",
            {
                "conditions": _CONDITIONS,
                "addresses": _merged(_open("An address: type and address."), "type", "Addresses."),
            },
            name=f"{CORE}.NodeStatus",
        ),
    },
)

NAMESPACE = _kind(
    "Namespace",
    "A scope for names; deleting it deletes everything in it. Never sent to boards.",
    {
        "spec": _open(
            "The namespace's spec.",
            {"finalizers": _list(_str(""), "Kept as given; nothing waits on them.")},
            name=f"{CORE}.NamespaceSpec",
        ),
        "status": _open(
            "Set by the gateway: phase Active.",
            {"phase": _str("Active (there is no Terminating phase).")},
            name=f"{CORE}.NamespaceStatus",
        ),
    },
)

_DATA = _map(_str(""), "Keys and text values.", keys="data-key")
_BINARY = _map(_str("", format="base64"), "Keys and base64 values.", keys="data-key")

CONFIGMAP = _kind(
    "ConfigMap",
    "Configuration data for pods: text (data) and binary (binaryData) values.",
    {
        "data": _DATA,
        "binaryData": _BINARY,
        "immutable": _bool("The data cannot change once set."),
    },
)

SECRET = _kind(
    "Secret",
    "Secret data for pods, base64 in data; stringData is folded into data on write.",
    {
        "data": _BINARY,
        "stringData": _DATA,
        "type": _str("The secret's type; default Opaque.", format="non-empty"),
        "immutable": _bool("The data cannot change once set."),
    },
)

_OBJECT_REFERENCE = _open(
    "The object an event is about.",
    {
        "kind": _str("Its kind.", format="non-empty"),
        "name": _str("Its name.", format="non-empty"),
        "namespace": _str("Its namespace."),
        "uid": _str("Its uid."),
        "apiVersion": _str("Its API version."),
    },
    name=f"{CORE}.ObjectReference",
    required=("kind", "name"),
)

EVENT = _kind(
    "Event",
    "Something that happened to an object; edge events from boards arrive as these.",
    {
        "involvedObject": replace(
            _OBJECT_REFERENCE, message="an Event is about an object: kind and name"
        ),
        "reason": _str("Why, in CamelCase."),
        "message": _str("What happened, for people."),
        "type": _str("Normal or Warning."),
        "source": _open("The component that reported it."),
        "firstTimestamp": _TIME,
        "lastTimestamp": _TIME,
        "eventTime": _str("When it happened, with microseconds."),
        "count": _int("How many times it happened."),
        "action": _str("What was done."),
        "related": _open("A second object it is about."),
        "reportingComponent": _str("The reporting controller."),
        "reportingInstance": _str("Its instance."),
        "series": _open("Repetitions of this event."),
    },
    required=("involvedObject",),
)

_CYCLE = _int("Milliseconds, a whole number >= 0.", minimum=0)
_PROPERTY_NAME = _str(
    "The property's name: at most 128 characters, no '/', '#' or '+'.",
    format="property-name",
    message="name is required",
)

DEVICE_MODEL = _kind(
    "DeviceModel",
    "What a kind of device offers: its properties and protocol (KubeEdge v1beta1).",
    {
        "spec": _open(
            "The model.",
            {
                "protocol": _str("The protocol's name (modbus, ...)."),
                "properties": _list(
                    _open(
                        "A property of the model.",
                        {
                            "name": _PROPERTY_NAME,
                            "type": _str(
                                "int, float, double, string, boolean, bytes or stream.",
                                format="property-type",
                            ),
                            "accessMode": _str(
                                "ReadWrite or ReadOnly.", enum=("ReadWrite", "ReadOnly")
                            ),
                            "minimum": Schema(format="number-or-string", description="A bound."),
                            "maximum": Schema(format="number-or-string", description="A bound."),
                            "unit": _str("The unit of its values."),
                        },
                        name=f"{DEVICES}.ModelProperty",
                        required=("name",),
                    ),
                    "The properties.",
                    unique=True,
                    merge_key="name",
                ),
            },
            name=f"{DEVICES}.DeviceModelSpec",
        ),
    },
    required=("spec",),
)

DEVICE = _kind(
    "Device",
    "A device attached to a node, with its twin properties (KubeEdge v1beta1).",
    {
        "spec": _open(
            "The device.",
            {
                "deviceModelRef": _open(
                    "The DeviceModel this device is one of.",
                    {
                        "name": _str(
                            "The DeviceModel's name.",
                            format="non-empty",
                            message="the DeviceModel's name is required",
                        )
                    },
                    required=("name",),
                ),
                "nodeName": _str("The node the device is attached to.", format="dns-subdomain"),
                "protocol": _open(
                    "How the mapper reaches the device.",
                    {
                        "protocolName": _str("modbus, serial, ..."),
                        "configData": _open("Protocol settings (edgeflock extensions: mappers/)."),
                    },
                ),
                "properties": _list(
                    _open(
                        "A property of the device: how to read it and its desired value.",
                        {
                            "name": _PROPERTY_NAME,
                            "desired": _open(
                                "The desired value.",
                                {
                                    "value": _str(
                                        "Twin values are strings (quote numbers).",
                                        max_length=4096,
                                    )
                                },
                            ),
                            "visitors": _open(
                                "How the mapper reads the property.",
                                {"configData": _open("Protocol settings (register, offset...).")},
                            ),
                            "collectCycle": _CYCLE,
                            "reportCycle": _CYCLE,
                            "reportToCloud": _bool("Report values to the cloud."),
                        },
                        name=f"{DEVICES}.DeviceProperty",
                        required=("name",),
                    ),
                    "The properties.",
                    unique=True,
                    merge_key="name",
                ),
            },
            name=f"{DEVICES}.DeviceSpec",
            required=("deviceModelRef",),
        ),
        "status": _open("What the node reports: twins, state, lastOnlineTime."),
    },
    required=("spec",),
)

KIND_SCHEMAS: Final[dict[str, Schema]] = {
    kind: schema
    for kind, schema in (
        ("Pod", POD),
        ("Node", NODE),
        ("Namespace", NAMESPACE),
        ("ConfigMap", CONFIGMAP),
        ("Secret", SECRET),
        ("Event", EVENT),
        ("Device", DEVICE),
        ("DeviceModel", DEVICE_MODEL),
    )
}


def named_schemas(roots: Iterable[Schema] | None = None) -> Iterator[Schema]:
    """Every schema node with a type name under ``roots`` (default: every
    kind's), each once: the types an OpenAPI document defines."""
    seen: set[str] = set()
    stack = list(KIND_SCHEMAS.values() if roots is None else roots)
    while stack:
        s = stack.pop()
        if s.name is not None:
            if s.name in seen:
                continue
            seen.add(s.name)
            yield s
        stack.extend(s.properties.values())
        stack.extend(x for x in (s.items, s.values) if x is not None)
