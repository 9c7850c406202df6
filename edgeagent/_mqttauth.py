"""Local MQTT credentials and ACLs: the agent owns the broker's auth.

With ``mqtt_auth`` the local mosquitto runs with ``allow_anonymous false`` and
reads two files the agent writes into its auth directory (``mqtt_auth_dir``,
default ``DATA_DIR/mqtt``):

``passwd``
    mosquitto's ``password_file``: one user for the agent (``edgeflock-agent``,
    a fresh random password each time the agent starts) and one per mapper
    protocol (``mapper-<protocol>``), hashed as mosquitto 2.0's
    ``mosquitto_passwd`` does (``$7$``: PBKDF2-HMAC-SHA512, 101 iterations, a
    12-byte salt, both base64).
``acl``
    mosquitto's ``acl_file``. The agent reads and writes ``$hw/#``. A mapper may
    publish only ``twin/update``, ``twin/get`` and ``state/update`` of the
    devices bound to this node whose ``spec.protocol.protocolName`` it serves,
    read those devices' topics (results, deltas, documents), in both forms the
    twin serves (``{namespace}/{name}``, and ``{name}`` while no other namespace
    of the node uses it), ask for and read this node's membership, and publish
    its own status topic. Nobody but the
    agent may publish ``$hw/events/upload/#`` (cloud Events) or a device's
    deltas and documents (the cloud's desired values). Anonymous clients are
    refused.

A mapper's password is kept in ``mapper-<protocol>.cred`` (JSON
``{"username", "password"}``, mode 0600) that the mapper reads at start
(``--mqtt-credentials``); it is created once and survives agent restarts.
Mappers of edgeflock's own protocols (:data:`BUILTIN_PROTOCOLS`) get theirs
before any device exists; another protocol gets one when a device of it is
bound here.

The ACL names each device, because mosquitto's ``pattern`` rules substitute only
the client's own username or id (``%u``/``%c``), which cannot say "the devices
of this protocol". So the agent rewrites the files whenever the Device objects
in its store change (written atomically, only when different) and makes
mosquitto reload them with SIGHUP, to the PID in the broker's ``pid_file``
(checked to be a ``mosquitto`` process first). mosquitto checks the ACL for
every message it delivers, so a mapper's wildcard subscription
(``$hw/events/device/+/+/twin/update/delta``) is granted but only its own
devices' messages reach it. An unauthorised publish is dropped by the broker
without an error the client sees (MQTT 3.1.1 has no negative PUBACK).

Written files are readable by the directory's group (0640; a setgid directory
of group ``mosquitto`` gives them that group), so a broker that drops its root
privileges can read them; credentials stay 0600.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import re
import secrets
import signal
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypedDict

import trio

from edgeio import write_atomic
from edgeproto import topics

from ._config import AgentConfig
from ._errors import AgentError
from ._meta import Meta

log = logging.getLogger(__name__)

__all__ = [
    "AGENT_USER",
    "BUILTIN_PROTOCOLS",
    "Login",
    "MqttAuth",
    "MqttAuthError",
    "acl_text",
    "bus_auth",
    "credentials_path",
    "hash_password",
    "mapper_devices",
    "mapper_user",
    "password_text",
]

AGENT_USER = "edgeflock-agent"
BUILTIN_PROTOCOLS = ("modbus", "serial")
PASSWD_FILE = "passwd"
ACL_FILE = "acl"
RETRY = 5.0  # seconds between attempts to write an unwritable auth directory
ITERATIONS = 101  # mosquitto_passwd's default for $7$
SALT_BYTES = 12

# Names that go into the ACL and password files verbatim: no spaces, newlines,
# ':' or MQTT wildcards. Device names are Kubernetes DNS-1123 subdomains.
_PROTOCOL = re.compile(r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a DNS label
_DEVICE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Login(TypedDict, total=False):
    """The EventBus's login keywords."""

    username: str
    password: str


class MqttAuthError(AgentError):
    """The auth directory or a credentials file cannot be written or read."""


def mapper_user(protocol: str) -> str:
    return f"mapper-{protocol}"


def credentials_path(auth_dir: Path, protocol: str) -> Path:
    """Where the mapper of ``protocol`` finds its username and password."""
    return auth_dir / f"{mapper_user(protocol)}.cred"


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """mosquitto 2.0's ``$7$`` password hash: ``$7$<iterations>$<salt>$<PBKDF2-SHA512>``."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
    b64 = base64.b64encode
    return f"$7${ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def password_text(hashes: Mapping[str, str]) -> str:
    """A ``password_file``: ``user:hash`` lines."""
    return "".join(f"{user}:{h}\n" for user, h in sorted(hashes.items()))


def mapper_devices(devices: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, list[str]]:
    """``(key, Device object)`` → protocol name → ids (``namespace/name``) of its
    devices. Devices without a protocol, or whose names could not be written into
    an ACL, are left out (logged)."""
    out: dict[str, set[str]] = {}
    for key, obj in devices:
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        namespace = meta.get("namespace") or "default"
        spec = obj.get("spec")
        proto = spec.get("protocol") if isinstance(spec, dict) else None
        protocol = proto.get("protocolName") if isinstance(proto, dict) else None
        if not protocol:
            continue
        if not isinstance(protocol, str) or not _PROTOCOL.match(protocol):
            log.warning("mqtt auth: device %s: protocol %r is not a usable name", key, protocol)
            continue
        if not isinstance(name, str) or len(name) > 253 or not _DEVICE.match(name):
            log.warning("mqtt auth: device %s: name %r cannot go into an ACL", key, name)
            continue
        if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
            log.warning("mqtt auth: device %s: namespace %r cannot go into an ACL", key, namespace)
            continue
        out.setdefault(protocol, set()).add(topics.device_id(namespace, name))
    return {p: sorted(names) for p, names in sorted(out.items())}


def acl_text(node: str, mappers: Mapping[str, Iterable[str]]) -> str:
    """The ``acl_file``: the agent's rules, then each mapper's (a protocol with
    no devices may still ask for membership). ``mappers`` maps a protocol to its
    device ids (``namespace/name``); each device's topics are granted in both
    forms the twin serves, KubeEdge 1.17+'s ``{namespace}/{name}`` and, while the
    name is unique on the node, the legacy ``{name}``."""
    dev = topics.DEVICE_PREFIX
    mappers = {p: list(ids) for p, ids in mappers.items()}
    names = Counter(i.rpartition("/")[2] for ids in mappers.values() for i in ids)
    lines = [
        "# written by edgeflock's agent; rewritten when devices change",
        f"user {AGENT_USER}",
        "topic readwrite $hw/#",
        "topic read edgeflock/#",
    ]
    for protocol, ids in sorted(mappers.items()):
        lines += [
            "",
            f"user {mapper_user(protocol)}",
            f"topic write {topics.membership_topic(node, topics.MEMBERSHIP_GET)}",
            f"topic write {topics.membership_topic(node, topics.MEMBERSHIP_DETAIL)}",
            f"topic read {topics.membership_topic(node, topics.MEMBERSHIP_GET_RESULT)}",
            f"topic read {topics.membership_topic(node, topics.MEMBERSHIP_DETAIL_RESULT)}",
            f"topic read {topics.membership_topic(node, topics.MEMBERSHIP_UPDATED)}",
            f"topic write edgeflock/mappers/{protocol}/{node}/status",
            # edgecore's answer to an update it cannot read has no device id in
            # its topic; it carries a KubeEdge reason and nothing of the request.
            f"topic read {topics.UNADDRESSED_UPDATE_RESULT}",
        ]
        for ident in ids:
            name = ident.rpartition("/")[2]
            for addr in (ident, name) if names[name] == 1 else (ident,):
                lines += [
                    f"topic write {dev}{addr}{topics.TWIN_UPDATE}",
                    f"topic write {dev}{addr}{topics.TWIN_GET}",
                    f"topic write {dev}{addr}{topics.STATE_UPDATE}",
                    f"topic read {dev}{addr}/#",
                ]
    return "\n".join(lines) + "\n"


class MqttAuth:
    """Keeps the broker's password and ACL files in step with the Device objects
    in the agent's store. Start it before the EventBus, which connects with
    :meth:`agent_credentials`."""

    def __init__(self, config: AgentConfig, meta: Meta) -> None:
        self._cfg = config
        self._meta = meta
        self._dir = config.auth_dir
        self._agent_password = secrets.token_urlsafe(24)
        self._passwords: dict[str, str] = {AGENT_USER: self._agent_password}
        self._hashes: dict[str, str] = {}
        self._written: dict[str, str] = {}
        self._reload_failing = False
        self._write_failing = False
        self.counters: Counter[str] = Counter()

    def agent_credentials(self) -> tuple[str, str]:
        return AGENT_USER, self._agent_password

    def statistics(self) -> dict[str, int]:
        return dict(self.counters)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # A directory that cannot be written (full card) does not hold up the
        # agent's start: the bus is refused until a retry succeeds.
        gen = self._meta.generation
        ok = await self._try_update()
        task_status.started()
        while True:
            with trio.move_on_after(math.inf if ok else RETRY):
                gen = await self._meta.wait_changed(gen)
            ok = await self._try_update()

    async def _try_update(self) -> bool:
        try:
            await self.update()
        except MqttAuthError as exc:
            self.counters["write_failures"] += 1
            level = logging.DEBUG if self._write_failing else logging.ERROR
            log.log(level, "%s (retrying every %.0f s)", exc, RETRY)
            self._write_failing = True
            return False
        self._write_failing = False
        return True

    async def update(self) -> None:
        """Rewrite what changed and make the broker reload it."""
        devices = await self._meta.list_objects("devices")
        mappers: dict[str, list[str]] = {p: [] for p in BUILTIN_PROTOCOLS}
        mappers.update(mapper_devices(devices))
        if await trio.to_thread.run_sync(self._write_files, mappers):
            self.reload()

    def _write_files(self, mappers: Mapping[str, list[str]]) -> bool:
        try:
            if not self._dir.is_dir():
                self._dir.mkdir(parents=True, mode=0o750)
            for protocol in mappers:
                user = mapper_user(protocol)
                if user not in self._passwords:
                    self._passwords[user] = self._mapper_password(protocol)
            for user, password in self._passwords.items():
                if user not in self._hashes:
                    self._hashes[user] = hash_password(password)
            files = {
                PASSWD_FILE: password_text(self._hashes),
                ACL_FILE: acl_text(self._cfg.node, mappers),
            }
            changed = False
            for name, text in files.items():
                if self._written.get(name) != text:
                    write_atomic(self._dir / name, text.encode(), 0o640)
                    self._written[name] = text
                    changed = True
        except OSError as exc:
            raise MqttAuthError(f"mqtt auth: cannot write {self._dir}: {exc}") from exc
        if changed:
            self.counters["writes"] += 1
            log.info("mqtt auth: wrote %s for %d mapper protocols", self._dir, len(mappers))
        return changed

    def _mapper_password(self, protocol: str) -> str:
        """The mapper's password from its credentials file, made if missing or bad."""
        path = credentials_path(self._dir, protocol)
        try:
            cred = json.loads(path.read_text())
            if cred["username"] == mapper_user(protocol) and isinstance(cred["password"], str):
                if len(cred["password"]) >= 16:
                    return str(cred["password"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("mqtt auth: %s is unusable (%s); making a new password", path, exc)
        password = secrets.token_urlsafe(24)
        body = {"username": mapper_user(protocol), "password": password}
        write_atomic(path, (json.dumps(body) + "\n").encode(), 0o600)
        log.info("mqtt auth: credentials for the %s mapper in %s", protocol, path)
        return password

    def reload(self) -> bool:
        """SIGHUP to the broker named by its PID file. False (logged once, then at
        DEBUG) when there is no such mosquitto: it reads the files when it starts."""
        path = self._cfg.broker_pid_file
        try:
            pid = int(path.read_text().strip())
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            if comm != "mosquitto":
                raise ProcessLookupError(f"pid {pid} is {comm!r}, not mosquitto")
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            self.counters["reload_failures"] += 1
            level = logging.DEBUG if self._reload_failing else logging.WARNING
            log.log(level, "mqtt auth: cannot make the broker reload (%s): %s", path, exc)
            self._reload_failing = True
            return False
        self._reload_failing = False
        self.counters["reloads"] += 1
        log.debug("mqtt auth: broker pid %d reloads its password and ACL files", pid)
        return True


def bus_auth(config: AgentConfig, meta: Meta) -> tuple[list[tuple[str, Callable[..., Any]]], Login]:
    """The modules to start before the EventBus and its login keywords: with
    ``mqtt_auth`` an :class:`MqttAuth` and the agent's credentials, else none."""
    if not config.mqtt_auth:
        return [], {}
    auth = MqttAuth(config, meta)
    user, password = auth.agent_credentials()
    return [("mqttauth", auth.run)], Login(username=user, password=password)
