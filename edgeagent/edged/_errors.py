"""edged's exceptions: one root, subclasses that say what happened."""

from __future__ import annotations

from .._errors import AgentError

__all__ = ["ContainerNotRunning", "CriError", "EdgedError", "PodNotFound"]


class EdgedError(AgentError):
    """Something edged was asked to do cannot be done."""

    http_code = 500
    reason = "InternalError"


class CriError(EdgedError):
    """A CRI call failed; ``code`` is the gRPC status name (``UNAVAILABLE``, ``NOT_FOUND``…)."""

    def __init__(self, method: str, code: str, details: str) -> None:
        super().__init__(f"CRI {method}: {code}: {details}")
        self.method = method
        self.code = code
        self.details = details

    @property
    def unavailable(self) -> bool:
        return self.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")

    @property
    def http_code(self) -> int:  # type: ignore[override]
        return 503 if self.unavailable else 500


class PodNotFound(EdgedError, LookupError):
    """No such pod (or container) on this node."""

    http_code = 404
    reason = "NotFound"


class ContainerNotRunning(EdgedError):
    """exec into a container that does not run."""

    http_code = 400
    reason = "BadRequest"
