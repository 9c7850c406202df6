"""The mappers' MQTT connection: :class:`edgeio.MqttClient` (paho-mqtt on trio,
shared with the agent's EventBus) with the mappers' settings. Incoming messages
land in its bounded ``incoming`` channel (full: dropped and counted); a broker
address that is not ``tcp://HOST:PORT`` is a :class:`ConfigError`."""

from __future__ import annotations

import uuid

import edgeio
from edgeio import Message
from mappers._errors import ConfigError

__all__ = ["Message", "MqttClient"]


class MqttClient(edgeio.MqttClient):
    def __init__(
        self,
        url: str,
        *,
        client_id: str = "",
        username: str | None = None,
        password: str | None = None,
        incoming_capacity: int = 1024,
    ) -> None:
        try:
            super().__init__(
                url,
                client_id=client_id or f"edgeflock-mapper-{uuid.uuid4().hex[:8]}",
                username=username,
                password=password,
                incoming_capacity=incoming_capacity,
                max_inflight=200,
                backoff_cap=5.0,
            )
        except edgeio.MqttUrlError as exc:
            raise ConfigError(f"--mqtt: {exc}") from None
