"""edgeproto: the sans-io wire protocol and resource schema shared by edgeflock's
cloud gateway, edge agent and mappers. Nothing here does I/O."""

from __future__ import annotations

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
from ._frame import FrameDecoder, frame_message
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
    AgentSync,
    Apply,
    Entry,
    ResyncStats,
    change_messages,
    decode_object,
    diff_views,
    encode_object,
    plan_resync,
    snapshot_messages,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "NODE_LABEL",
    "RESOURCES",
    "STREAM_CHUNK",
    "STREAM_WINDOW",
    "VERSION",
    "AgentSync",
    "Apply",
    "EdgeProtoError",
    "Entry",
    "FrameDecoder",
    "FrameTooLarge",
    "Kind",
    "Message",
    "ProtocolError",
    "Resource",
    "ResyncStats",
    "UnknownKind",
    "change_messages",
    "decode_message",
    "decode_object",
    "diff_views",
    "encode_message",
    "encode_object",
    "first_leaf",
    "frame_message",
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
