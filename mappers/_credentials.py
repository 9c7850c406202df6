"""A mapper's MQTT login, from the credentials file the agent writes with
``mqtt_auth`` (``<mqtt_auth_dir>/mapper-<protocol>.cred``: JSON
``{"username": ..., "password": ...}``, mode 0600)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mappers._errors import ConfigError

__all__ = ["Credentials", "load_credentials"]


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = ""

    def __repr__(self) -> str:  # never log the password
        return f"Credentials(username={self.username!r})"


def load_credentials(path: Path) -> Credentials:
    """Read ``path``; :class:`ConfigError` naming the file when it is unusable."""
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such credentials file (the agent writes it when it runs with mqtt_auth)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    user = body.get("username") if isinstance(body, dict) else None
    password = body.get("password") if isinstance(body, dict) else None
    if not isinstance(user, str) or not user or not isinstance(password, str):
        raise ConfigError(f'{path}: expected {{"username": "...", "password": "..."}}')
    return Credentials(user, password)
