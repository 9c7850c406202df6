"""cloudgateway's exception root."""

from __future__ import annotations

__all__ = ["GatewayError"]


class GatewayError(Exception):
    """Root of cloudgateway's errors."""
