"""The exception tree of edgeio: one root, subclasses that say what happened."""

from __future__ import annotations

__all__ = ["EdgeIOError", "MqttUrlError"]


class EdgeIOError(Exception):
    """Root of every error edgeio raises."""


class MqttUrlError(EdgeIOError, ValueError):
    """An MQTT broker address that is not ``tcp://HOST[:PORT]``."""
