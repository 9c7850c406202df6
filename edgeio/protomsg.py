"""Protobuf message classes from a serialized ``FileDescriptorProto``, for the
agent's checked-in ``.proto`` files (edged's CRI subset).

protobuf's public way to make the classes — ``descriptor_pool`` and
``message_factory``, what every generated ``_pb2`` module runs — also imports
protobuf's pure-Python implementation (its decoder, encoder, ``text_format`` and
well-known types, and with them ``datetime``, ``pickle`` and ``calendar``) even
when the upb extension does all the work: 1.2 MiB of the agent's 37 (BENCHMARKS.md,
"The agent's memory floor"). So with the upb backend, which every protobuf wheel
on PyPI since 4.21 carries, :func:`messages` adds the file to upb's default pool
and makes each class with upb's ``MessageMeta``, which is what
``message_factory`` does on upb. Those two names live in the private module
``google._upb._message``: where it or they are missing (another backend, a
protobuf that moved them), the public route is taken instead. Either way the
pool keeps one class per message, so a ``_pb2`` module of the same file imported
later gets the same classes.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import Any

__all__ = ["messages"]


def _upb() -> tuple[Any, Any] | None:
    """(add the file, make a class) through upb, or None without it."""
    try:
        upb = importlib.import_module("google._upb._message")
        base = importlib.import_module("google.protobuf.message").Message
        pool, meta = upb.default_pool, upb.MessageMeta
    except (ImportError, AttributeError):
        return None
    return pool.AddSerializedFile, lambda d: meta(d.name, (base,), {"DESCRIPTOR": d})


def _public() -> tuple[Any, Any]:
    from google.protobuf import descriptor_pool, message_factory

    return descriptor_pool.Default().AddSerializedFile, message_factory.GetMessageClass


def messages(serialized: bytes, *, lean: bool = True) -> SimpleNamespace:
    """The file's messages as a namespace shaped like its ``_pb2`` module: each
    top-level message class by name (nested ones as attributes of their parent),
    each enum value by name (an int), and the file's ``DESCRIPTOR``. ``lean=False``
    takes the public route (tests compare the two)."""
    add, make = (_upb() if lean else None) or _public()
    fd = add(serialized)
    ns = SimpleNamespace(DESCRIPTOR=fd)

    def build(desc: Any) -> Any:
        cls = make(desc)
        for nested in desc.nested_types:
            setattr(cls, nested.name, build(nested))
        return cls

    for name, desc in fd.message_types_by_name.items():
        setattr(ns, name, build(desc))
    for enum in fd.enum_types_by_name.values():
        for value in enum.values:
            setattr(ns, value.name, value.number)
    return ns
