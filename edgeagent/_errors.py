"""edgeagent's exception root."""

from __future__ import annotations


class AgentError(Exception):
    """Root of edgeagent's errors."""
