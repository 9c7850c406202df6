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

from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Final

from ._appsschema import APPS_KIND_SCHEMAS, SCALE
from ._schemabase import (
    CONDITIONS,
    CORE,
    DEVICES,
    POD_SPEC,
    POD_STATUS,
    TIME,
    Schema,
    array,
    boolean,
    integer,
    kind_schema,
    mapping,
    merged,
    open_obj,
    string,
)
from ._upgradeschema import UPGRADE_KIND_SCHEMAS

__all__ = ["KIND_SCHEMAS", "SCALE", "Schema", "named_schemas"]


POD = kind_schema(
    "Pod",
    "A group of containers that run together on one node (board).",
    {"spec": POD_SPEC, "status": POD_STATUS},
    required=("spec",),
)

NODE = kind_schema(
    "Node",
    "A board running the edgeflock agent.",
    {
        "spec": open_obj(
            "The node's spec.",
            {
                "unschedulable": boolean("No new pods are placed here."),
                "podCIDRs": array(string(""), "Pod address ranges.", merge=True),
                "taints": array(
                    open_obj("A taint."), "Taints repel pods that do not tolerate them."
                ),
            },
            name=f"{CORE}.NodeSpec",
        ),
        "status": open_obj(
            "What the node reports (the gateway owns the Ready condition).",
            {
                "conditions": CONDITIONS,
                "addresses": merged(
                    open_obj("An address: type and address."), "type", "Addresses."
                ),
            },
            name=f"{CORE}.NodeStatus",
        ),
    },
)

NAMESPACE = kind_schema(
    "Namespace",
    "A scope for names; deleting it deletes everything in it. Never sent to boards.",
    {
        "spec": open_obj(
            "The namespace's spec.",
            {"finalizers": array(string(""), "Kept as given; nothing waits on them.")},
            name=f"{CORE}.NamespaceSpec",
        ),
        "status": open_obj(
            "Set by the gateway: phase Active.",
            {"phase": string("Active (there is no Terminating phase).")},
            name=f"{CORE}.NamespaceStatus",
        ),
    },
)

_DATA = mapping(string(""), "Keys and text values.", keys="data-key")
_BINARY = mapping(string("", format="base64"), "Keys and base64 values.", keys="data-key")

CONFIGMAP = kind_schema(
    "ConfigMap",
    "Configuration data for pods: text (data) and binary (binaryData) values.",
    {
        "data": _DATA,
        "binaryData": _BINARY,
        "immutable": boolean("The data cannot change once set."),
    },
)

SECRET = kind_schema(
    "Secret",
    "Secret data for pods, base64 in data; stringData is folded into data on write.",
    {
        "data": _BINARY,
        "stringData": _DATA,
        "type": string("The secret's type; default Opaque.", format="non-empty"),
        "immutable": boolean("The data cannot change once set."),
    },
)

_OBJECT_REFERENCE = open_obj(
    "The object an event is about.",
    {
        "kind": string("Its kind.", format="non-empty"),
        "name": string("Its name.", format="non-empty"),
        "namespace": string("Its namespace."),
        "uid": string("Its uid."),
        "apiVersion": string("Its API version."),
    },
    name=f"{CORE}.ObjectReference",
    required=("kind", "name"),
)

EVENT = kind_schema(
    "Event",
    "Something that happened to an object; edge events from boards arrive as these.",
    {
        "involvedObject": replace(
            _OBJECT_REFERENCE, message="an Event is about an object: kind and name"
        ),
        "reason": string("Why, in CamelCase."),
        "message": string("What happened, for people."),
        "type": string("Normal or Warning."),
        "source": open_obj("The component that reported it."),
        "firstTimestamp": TIME,
        "lastTimestamp": TIME,
        "eventTime": string("When it happened, with microseconds."),
        "count": integer("How many times it happened."),
        "action": string("What was done."),
        "related": open_obj("A second object it is about."),
        "reportingComponent": string("The reporting controller."),
        "reportingInstance": string("Its instance."),
        "series": open_obj("Repetitions of this event."),
    },
    required=("involvedObject",),
)

_CYCLE = integer("Milliseconds, a whole number >= 0.", minimum=0)
_PROPERTY_NAME = string(
    "The property's name: at most 128 characters, no '/', '#' or '+'.",
    format="property-name",
    message="name is required",
)

DEVICE_MODEL = kind_schema(
    "DeviceModel",
    "What a kind of device offers: its properties and protocol (KubeEdge v1beta1).",
    {
        "spec": open_obj(
            "The model.",
            {
                "protocol": string("The protocol's name (modbus, ...)."),
                "properties": array(
                    open_obj(
                        "A property of the model.",
                        {
                            "name": _PROPERTY_NAME,
                            "type": string(
                                "int, float, double, string, boolean, bytes or stream.",
                                format="property-type",
                            ),
                            "accessMode": string(
                                "ReadWrite or ReadOnly.", enum=("ReadWrite", "ReadOnly")
                            ),
                            "minimum": Schema(format="number-or-string", description="A bound."),
                            "maximum": Schema(format="number-or-string", description="A bound."),
                            "unit": string("The unit of its values."),
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

DEVICE = kind_schema(
    "Device",
    "A device attached to a node, with its twin properties (KubeEdge v1beta1).",
    {
        "spec": open_obj(
            "The device.",
            {
                "deviceModelRef": open_obj(
                    "The DeviceModel this device is one of.",
                    {
                        "name": string(
                            "The DeviceModel's name.",
                            format="non-empty",
                            message="the DeviceModel's name is required",
                        )
                    },
                    required=("name",),
                ),
                "nodeName": string("The node the device is attached to.", format="dns-subdomain"),
                "protocol": open_obj(
                    "How the mapper reaches the device.",
                    {
                        "protocolName": string("modbus, serial, ..."),
                        "configData": open_obj(
                            "Protocol settings (edgeflock extensions: mappers/)."
                        ),
                    },
                ),
                "properties": array(
                    open_obj(
                        "A property of the device: how to read it and its desired value.",
                        {
                            "name": _PROPERTY_NAME,
                            "desired": open_obj(
                                "The desired value.",
                                {
                                    "value": string(
                                        "Twin values are strings (quote numbers).",
                                        max_length=4096,
                                    )
                                },
                            ),
                            "visitors": open_obj(
                                "How the mapper reads the property.",
                                {
                                    "configData": open_obj(
                                        "Protocol settings (register, offset...)."
                                    )
                                },
                            ),
                            "collectCycle": _CYCLE,
                            "reportCycle": _CYCLE,
                            "reportToCloud": boolean("Report values to the cloud."),
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
        "status": open_obj("What the node reports: twins, state, lastOnlineTime."),
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
        *APPS_KIND_SCHEMAS.items(),
        *UPGRADE_KIND_SCHEMAS.items(),
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
