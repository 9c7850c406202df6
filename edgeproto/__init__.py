"""edgeproto: the sans-io wire protocol and resource schema shared by edgeflock's
cloud gateway, edge agent and mappers. Nothing here does I/O.

The names below are loaded on first use (and then kept in the package), so a
process that needs only ``edgeproto.topics`` (a mapper) does not load the sync
state machine, the schema and cbor2.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._envelope import (
        DEFAULT_MAX_MESSAGE,
        STREAM_CHUNK,
        STREAM_WINDOW,
        VERSION,
        Kind,
        Message,
        decode_message,
        encode_message,
    )
    from ._errors import EdgeProtoError, FrameTooLarge, ProtocolError, UnknownKind, first_leaf
    from ._schema import (
        NODE_LABEL,
        RESOURCES,
        Resource,
        key_of,
        make_key,
        owner_node,
        parse_rfc3339,
        referenced_keys,
        resource_by_kind,
        resource_by_name,
        rfc3339,
        split_key,
    )
    from ._sync import (
        MAX_HUB_URL,
        MAX_HUBS,
        AgentSync,
        Apply,
        Entry,
        ResyncStats,
        change_messages,
        check_hub_url,
        check_hubs,
        decode_object,
        diff_views,
        encode_object,
        plan_resync,
        snapshot_messages,
    )

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "MAX_HUBS",
    "MAX_HUB_URL",
    "NODE_LABEL",
    "RESOURCES",
    "STREAM_CHUNK",
    "STREAM_WINDOW",
    "VERSION",
    "AgentSync",
    "Apply",
    "EdgeProtoError",
    "Entry",
    "FrameTooLarge",
    "Kind",
    "Message",
    "ProtocolError",
    "Resource",
    "ResyncStats",
    "UnknownKind",
    "change_messages",
    "check_hub_url",
    "check_hubs",
    "decode_message",
    "decode_object",
    "diff_views",
    "encode_message",
    "encode_object",
    "first_leaf",
    "key_of",
    "make_key",
    "owner_node",
    "parse_rfc3339",
    "plan_resync",
    "referenced_keys",
    "resource_by_kind",
    "resource_by_name",
    "rfc3339",
    "snapshot_messages",
    "split_key",
]

_HOME = {
    "AgentSync": "._sync",
    "Apply": "._sync",
    "DEFAULT_MAX_MESSAGE": "._envelope",
    "EdgeProtoError": "._errors",
    "Entry": "._sync",
    "FrameTooLarge": "._errors",
    "Kind": "._envelope",
    "MAX_HUBS": "._sync",
    "MAX_HUB_URL": "._sync",
    "Message": "._envelope",
    "NODE_LABEL": "._schema",
    "ProtocolError": "._errors",
    "RESOURCES": "._schema",
    "Resource": "._schema",
    "ResyncStats": "._sync",
    "STREAM_CHUNK": "._envelope",
    "STREAM_WINDOW": "._envelope",
    "UnknownKind": "._errors",
    "VERSION": "._envelope",
    "change_messages": "._sync",
    "check_hub_url": "._sync",
    "check_hubs": "._sync",
    "decode_message": "._envelope",
    "decode_object": "._sync",
    "diff_views": "._sync",
    "encode_message": "._envelope",
    "encode_object": "._sync",
    "first_leaf": "._errors",
    "key_of": "._schema",
    "make_key": "._schema",
    "owner_node": "._schema",
    "parse_rfc3339": "._schema",
    "plan_resync": "._sync",
    "referenced_keys": "._schema",
    "resource_by_kind": "._schema",
    "resource_by_name": "._schema",
    "rfc3339": "._schema",
    "snapshot_messages": "._sync",
    "split_key": "._schema",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
