"""The exception tree of edgeproto: one root, subclasses that say what happened."""

from __future__ import annotations

__all__ = ["EdgeProtoError", "FrameTooLarge", "ProtocolError", "UnknownKind", "first_leaf"]


class EdgeProtoError(Exception):
    """Root of every error edgeproto raises."""


class ProtocolError(EdgeProtoError):
    """Input that does not follow the wire protocol.

    ``code`` is the short machine-readable reason sent back in an ``error``
    message (``malformed``, ``too-large``, ``unknown-kind``, ``bad-field``...).
    """

    code = "malformed"
    # For a message that could not be decoded whole: its id and kind, when its
    # envelope still named them (so that a report can be answered by its id).
    message_id: int | None = None
    message_kind: str | None = None

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class FrameTooLarge(ProtocolError):
    code = "too-large"


class UnknownKind(ProtocolError):
    code = "unknown-kind"


def first_leaf(exc: BaseException, *, skip: tuple[type[BaseException], ...] = ()) -> BaseException:
    """The first exception inside (nested) exception groups that is not of a
    ``skip`` type; ``exc`` itself if it is not a group. Strict nurseries wrap
    everything in groups; callers that react to one failure use this to see it."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    fallback: BaseException | None = None
    for sub in exc.exceptions:
        leaf = first_leaf(sub, skip=skip)
        if not isinstance(leaf, skip):
            return leaf
        fallback = fallback or leaf
    return fallback or exc
