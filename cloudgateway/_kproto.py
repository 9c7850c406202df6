"""Kubernetes' protobuf request bodies, read into the JSON objects the API serves.

kubectl 1.32 writes built-in kinds through its typed clients as
``application/vnd.kubernetes.protobuf`` (``kubectl create configmap|secret|
namespace``, ``kubectl auth can-i``) and does not fall back to JSON on a 415.
A body is the magic ``k8s\\x00`` then a ``runtime.Unknown`` naming the kind and
holding the object's own message. The messages below are the subsets of
``k8s.io/api``'s ``generated.proto`` (same field numbers) for the kinds kubectl
writes that way; fields not listed are server-managed or unused here, and the
protobuf library skips them. Decoding is the ``protobuf`` library's, over
descriptors built here (no generated code to keep in step).

Answers stay JSON: clients that send protobuf also accept JSON.
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message, message_factory

from ._errors import GatewayError

__all__ = ["PROTOBUF", "ProtobufError", "decode_object"]

PROTOBUF = "application/vnd.kubernetes.protobuf"
_MAGIC = b"k8s\x00"
_PACKAGE = "edgeflock.k8s"

# name: [(field, number, type)], type one of string, bytes, bool, [T] (repeated),
# map<string>|map<bytes> (map from string), or another message's name.
_MESSAGES: dict[str, list[tuple[str, int, str]]] = {
    "TypeMeta": [("apiVersion", 1, "string"), ("kind", 2, "string")],
    "Unknown": [
        ("typeMeta", 1, "TypeMeta"),
        ("raw", 2, "bytes"),
        ("contentEncoding", 3, "string"),
        ("contentType", 4, "string"),
    ],
    "OwnerReference": [
        ("kind", 1, "string"),
        ("name", 3, "string"),
        ("uid", 4, "string"),
        ("apiVersion", 5, "string"),
        ("controller", 6, "bool"),
        ("blockOwnerDeletion", 7, "bool"),
    ],
    "ObjectMeta": [
        ("name", 1, "string"),
        ("generateName", 2, "string"),
        ("namespace", 3, "string"),
        ("uid", 5, "string"),
        ("resourceVersion", 6, "string"),
        ("labels", 11, "map<string>"),
        ("annotations", 12, "map<string>"),
        ("ownerReferences", 13, "[OwnerReference]"),
        ("finalizers", 14, "[string]"),
    ],
    "ConfigMap": [
        ("metadata", 1, "ObjectMeta"),
        ("data", 2, "map<string>"),
        ("binaryData", 3, "map<bytes>"),
        ("immutable", 4, "bool"),
    ],
    "Secret": [
        ("metadata", 1, "ObjectMeta"),
        ("data", 2, "map<bytes>"),
        ("type", 3, "string"),
        ("stringData", 4, "map<string>"),
        ("immutable", 5, "bool"),
    ],
    "NamespaceSpec": [("finalizers", 1, "[string]")],
    "Namespace": [("metadata", 1, "ObjectMeta"), ("spec", 2, "NamespaceSpec")],
    "ResourceAttributes": [
        ("namespace", 1, "string"),
        ("verb", 2, "string"),
        ("group", 3, "string"),
        ("version", 4, "string"),
        ("resource", 5, "string"),
        ("subresource", 6, "string"),
        ("name", 7, "string"),
    ],
    "NonResourceAttributes": [("path", 1, "string"), ("verb", 2, "string")],
    "SelfSubjectAccessReviewSpec": [
        ("resourceAttributes", 1, "ResourceAttributes"),
        ("nonResourceAttributes", 2, "NonResourceAttributes"),
    ],
    "SelfSubjectAccessReview": [
        ("metadata", 1, "ObjectMeta"),
        ("spec", 2, "SelfSubjectAccessReviewSpec"),
    ],
    "SelfSubjectRulesReviewSpec": [("namespace", 1, "string")],
    "SelfSubjectRulesReview": [
        ("metadata", 1, "ObjectMeta"),
        ("spec", 2, "SelfSubjectRulesReviewSpec"),
    ],
}

# (apiVersion, kind) a body may carry -> the message holding it
_KINDS = {
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Namespace"),
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"),
    ("authorization.k8s.io/v1", "SelfSubjectRulesReview"),
}

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES, "bool": _F.TYPE_BOOL}


class ProtobufError(GatewayError):
    """A protobuf body that is not a Kubernetes object this server reads."""


def _field(
    msg: descriptor_pb2.DescriptorProto, name: str, number: int, type_: str, *, repeated: bool
) -> None:
    f = msg.field.add(name=name, number=number, json_name=name)
    f.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    if type_ in _SCALARS:
        f.type = _SCALARS[type_]
    else:
        f.type = _F.TYPE_MESSAGE
        f.type_name = f".{_PACKAGE}.{type_}"


def _build() -> dict[str, type[message.Message]]:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="edgeflock_k8s.proto", package=_PACKAGE, syntax="proto2"
    )
    for name, fields in _MESSAGES.items():
        msg = fdp.message_type.add(name=name)
        for field, number, type_ in fields:
            if type_.startswith("map<"):
                entry = msg.nested_type.add(name=f"{field[0].upper()}{field[1:]}Entry")
                entry.options.map_entry = True
                _field(entry, "key", 1, "string", repeated=False)
                _field(entry, "value", 2, type_[4:-1], repeated=False)
                _field(msg, field, number, f"{name}.{entry.name}", repeated=True)
            elif type_.startswith("["):
                _field(msg, field, number, type_[1:-1], repeated=True)
            else:
                _field(msg, field, number, type_, repeated=False)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
        for name in _MESSAGES
    }


@functools.cache
def _classes() -> dict[str, type[message.Message]]:
    return _build()  # on first use: most gateways never see protobuf


def _clear_empty(msg: message.Message) -> None:
    """Clear fields set to "" (Go sends every string; JSON omits empty ones),
    in nested messages too; map values are kept as they are."""
    for field, value in msg.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            continue
        if field.type == field.TYPE_STRING and value == "":
            msg.ClearField(field.name)
        elif field.message_type is not None:
            for sub in [value] if isinstance(value, message.Message) else value:
                _clear_empty(sub)


def decode_object(body: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf-encoded Kubernetes object, or ProtobufError."""
    if not body.startswith(_MAGIC):
        raise ProtobufError("a Kubernetes protobuf body starts with k8s\\x00")
    classes = _classes()
    try:
        unknown = classes["Unknown"].FromString(body[len(_MAGIC) :])
    except message.DecodeError as exc:
        raise ProtobufError(f"the protobuf body does not decode: {exc}") from None
    meta: Any = getattr(unknown, "typeMeta")  # noqa: B009 (a dynamic message)
    api_version, kind = str(meta.apiVersion), str(meta.kind)
    if (api_version, kind) not in _KINDS:
        supported = ", ".join(k for _, k in sorted(_KINDS))
        raise ProtobufError(
            f"this server reads protobuf bodies only for {supported}, not "
            f"{api_version or '?'} {kind or '?'}: send JSON (kubectl apply does)"
        )
    if getattr(unknown, "contentEncoding"):  # noqa: B009
        raise ProtobufError("compressed protobuf bodies are not supported")
    try:
        obj = classes[kind].FromString(getattr(unknown, "raw"))  # noqa: B009
    except message.DecodeError as exc:
        raise ProtobufError(f"the protobuf {kind} does not decode: {exc}") from None
    _clear_empty(obj)
    out: dict[str, Any] = json_format.MessageToDict(obj, preserving_proto_field_name=True)
    return {"apiVersion": api_version, "kind": kind, **out}
