"""What every mapper process does around its devices.

- Learns its devices: from the agent (``membership/get`` after every MQTT
  (re)connect, then ``membership/updated``) or once from a local YAML file.
- Keeps one task per device, replacing it when the device changes and cancelling
  it when the device goes away.
- Routes ``twin/update/delta`` messages to the device's task.
- Publishes its statistics (retained) on ``edgeflock/mappers/{protocol}/{node}/status``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from edgeio import add_log_arguments, configure_logging, set_log_fields, trim_heap
from edgeio._metricsserver import MetricsAddressError, parse_listen
from edgeproto import topics
from mappers._credentials import Credentials, load_credentials
from mappers._errors import ConfigError, MapperError
from mappers._manifest import DeviceDoc, doc_from_membership, docs_from_yaml
from mappers._mqtt import Message, MqttClient
from mappers._twin import delta_values, membership_get

__all__ = ["DeviceFactory", "DeviceTask", "FactoryMaker", "MapperShell", "cli_main", "run_mapper"]

log = logging.getLogger(__name__)

STATUS_INTERVAL = 5.0
CRASH_BACKOFF = 1.0
CRASH_BACKOFF_MAX = 30.0


class DeviceTask(Protocol):
    name: str

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...

    def on_delta(self, delta: Mapping[str, str]) -> None: ...

    def statistics(self) -> dict[str, Any]: ...


DeviceFactory = Callable[[DeviceDoc], DeviceTask]
FactoryMaker = Callable[[MqttClient], DeviceFactory]


@dataclass
class _Slot:
    task: DeviceTask
    doc: DeviceDoc
    crashes: int = 0
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


class MapperShell:
    def __init__(
        self,
        mqtt: MqttClient,
        protocol_name: str,
        factory: DeviceFactory,
        *,
        node: str | None = None,
        config_path: Path | None = None,
    ) -> None:
        if (node is None) == (config_path is None):
            raise ConfigError("give either --node (agent mode) or --config (standalone)")
        self.mqtt = mqtt
        self.protocol_name = protocol_name
        self.factory = factory
        self.node = node
        self.config_path = config_path
        self.devices: dict[str, _Slot] = {}
        self.rejected: dict[str, str] = {}
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()
        self._stats = {
            "membership_asks": 0,
            "membership_results": 0,
            "membership_updates": 0,
            "deltas_unrouted": 0,
            "device_crashes": 0,
        }

    @property
    def status_topic(self) -> str:
        return f"edgeflock/mappers/{self.protocol_name}/{self.node or 'standalone'}/status"

    def statistics(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol_name,
            "node": self.node,
            "mqtt": self.mqtt.statistics(),
            **self._stats,
            "rejected": dict(self.rejected),
            "devices": {name: slot.task.statistics() for name, slot in self.devices.items()},
        }

    async def wait_devices(self, names: Sequence[str]) -> None:
        """Wait until exactly these devices run (tests, tools)."""
        while set(self.devices) != set(names):
            self._changed = trio.Event()
            await self._changed.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Deltas in KubeEdge 1.17+'s form, the one this mapper publishes in.
        self.mqtt.subscribe(topics.CURRENT + topics.TWIN_UPDATE_DELTA)
        if self.node is not None:
            self.mqtt.subscribe(topics.membership_topic(self.node, topics.MEMBERSHIP_GET_RESULT))
            self.mqtt.subscribe(topics.membership_topic(self.node, topics.MEMBERSHIP_UPDATED))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.config_path is not None:
                await self._replace_all(docs_from_yaml(self.config_path))
                trim_heap()  # start-up's garbage (the YAML parse, the first tasks)
            else:
                nursery.start_soon(self._ask_membership)
            nursery.start_soon(self._route)
            nursery.start_soon(self._publish_status)
            task_status.started()

    # -- membership -----------------------------------------------------------------

    async def _ask_membership(self) -> None:
        assert self.node is not None
        topic = topics.membership_topic(self.node, topics.MEMBERSHIP_GET)
        async with self.mqtt.connect_events() as events:
            async for generation in events:
                log.info(
                    "node %s: asking the agent for devices (connection %d)", self.node, generation
                )
                self.mqtt.publish(topic, membership_get())
                self._stats["membership_asks"] += 1

    def _docs(self, devs: Any) -> list[DeviceDoc]:
        out = []
        for dev in devs if isinstance(devs, list) else []:
            if not isinstance(dev, Mapping):
                continue
            name = str(dev.get("name") or dev.get("id") or "?")
            try:
                doc = doc_from_membership(dev)
            except ConfigError as exc:
                log.error("device %s: %s", name, exc, extra={"device": name})
                self.rejected[name] = str(exc)
                continue
            if doc.protocol_name == self.protocol_name:
                out.append(doc)
        return out

    async def _on_node_message(self, suffix: str, body: Mapping[str, Any]) -> None:
        if suffix == topics.MEMBERSHIP_GET_RESULT:
            self._stats["membership_results"] += 1
            await self._replace_all(self._docs(body.get("devices")))
            trim_heap()  # hand back what start-up and the device set-up freed
        elif suffix == topics.MEMBERSHIP_UPDATED:
            self._stats["membership_updates"] += 1
            for doc in self._docs(body.get("added_devices")):
                await self._add(doc)
            for gone in body.get("removed_devices") or []:
                if isinstance(gone, Mapping):
                    name = gone.get("name") or gone.get("id")
                    if isinstance(name, str):
                        await self._remove(name)

    # -- device tasks -----------------------------------------------------------------

    async def _replace_all(self, docs: Sequence[DeviceDoc]) -> None:
        wanted = {d.name for d in docs}
        for name in list(self.devices):
            if name not in wanted:
                await self._remove(name)
        for doc in docs:
            await self._add(doc)

    async def _add(self, doc: DeviceDoc) -> None:
        assert self._nursery is not None
        self.rejected.pop(doc.name, None)
        try:
            task = self.factory(doc)
        except MapperError as exc:
            log.error("device %s: not started: %s", doc.name, exc, extra={"device": doc.name})
            self.rejected[doc.name] = str(exc)
            await self._remove(doc.name)
            return
        await self._remove(doc.name)
        slot = _Slot(task, doc)
        self.devices[doc.name] = slot
        log.info(
            "device %s: started (%s)", doc.name, self.protocol_name, extra={"device": doc.name}
        )
        self._nursery.start_soon(self._run_slot, slot)
        self._changed.set()

    async def _run_slot(self, slot: _Slot) -> None:
        """Run a device task; a crash (a bug) restarts it from its doc with backoff."""
        try:
            with slot.scope:
                while True:
                    try:
                        await slot.task.run()
                        return
                    except Exception:
                        slot.crashes += 1
                        self._stats["device_crashes"] += 1
                        delay = min(CRASH_BACKOFF * 2 ** (slot.crashes - 1), CRASH_BACKOFF_MAX)
                        log.exception(
                            "device %s: task crashed (%d), restarting in %.1f s",
                            slot.doc.name,
                            slot.crashes,
                            delay,
                        )
                        await trio.sleep(delay)
                        slot.task = self.factory(slot.doc)
        finally:
            slot.done.set()

    async def _remove(self, name: str) -> None:
        slot = self.devices.pop(name, None)
        if slot is None:
            return
        slot.scope.cancel()
        await slot.done.wait()
        log.info("device %s: stopped", name, extra={"device": name})
        self._changed.set()

    # -- routing --------------------------------------------------------------------

    async def _route(self) -> None:
        async for msg in self.mqtt.incoming:
            await self._dispatch(msg)

    async def _dispatch(self, msg: Message) -> None:
        dev = topics.parse_device_topic(msg.topic)
        if dev is not None:
            name, suffix = dev.name, dev.suffix
            if suffix != topics.TWIN_UPDATE_DELTA:
                return
            slot = self.devices.get(name)
            if slot is None or dev.namespace not in (None, slot.doc.namespace):
                self._stats["deltas_unrouted"] += 1
                return
            try:
                delta = delta_values(msg.payload)
            except ValueError as exc:
                log.warning("device %s: bad delta message: %s", name, exc, extra={"device": name})
                return
            slot.task.on_delta(delta)
            return
        node = topics.parse_node_topic(msg.topic)
        if node is None or node[0] != self.node:
            return
        try:
            body = json.loads(msg.payload)
        except ValueError:
            log.warning("node %s: %s is not JSON", self.node, msg.topic)
            return
        if isinstance(body, Mapping):
            await self._on_node_message(node[1], body)

    async def _publish_status(self) -> None:
        await trio.sleep(1.0)
        while True:
            payload = json.dumps(self.statistics(), default=str)
            self.mqtt.publish(self.status_topic, payload, qos=0, retain=True)
            await trio.sleep(STATUS_INTERVAL)


async def run_mapper(
    url: str,
    protocol_name: str,
    make_factory: FactoryMaker,
    *,
    node: str | None,
    config_path: Path | None,
    credentials: Credentials | None = None,
    metrics: str | None = None,
) -> None:
    """The whole process: MQTT client + shell (and, with ``metrics``, the
    ``/metrics`` listener on that loopback address), until SIGTERM/SIGINT."""
    mqtt = MqttClient(
        url,
        client_id=f"{protocol_name}-mapper-{node or 'standalone'}",
        username=credentials.username if credentials else None,
        password=credentials.password if credentials else None,
    )
    shell = MapperShell(mqtt, protocol_name, make_factory(mqtt), node=node, config_path=config_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(mqtt.run)
        await nursery.start(shell.run)
        if metrics is not None:
            from edgeio._metricsserver import serve_metrics

            from ._metrics import MapperMetrics  # prometheus_client only with --metrics

            await nursery.start(serve_metrics, metrics, MapperMetrics(shell).render)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("signal %d: stopping", signum)
                nursery.cancel_scope.cancel()
                break


def cli_main(protocol_name: str, make_factory: FactoryMaker, argv: Sequence[str] | None) -> int:
    """``{protocol}-mapper --mqtt URL (--node NAME | --config FILE)``."""
    ap = argparse.ArgumentParser(prog=f"{protocol_name}-mapper")
    ap.add_argument("--mqtt", required=True, help="broker, tcp://HOST:PORT")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--node", help="follow this node's devices through the agent")
    mode.add_argument("--config", type=Path, help="standalone: a YAML file of Device(Model)s")
    ap.add_argument(
        "--mqtt-credentials",
        type=Path,
        help="the login the agent wrote (with mqtt_auth): MQTT_AUTH_DIR/mapper-PROTOCOL.cred",
    )
    ap.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on this loopback address, e.g. 127.0.0.1:9102",
    )
    add_log_arguments(ap)
    args = ap.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    set_log_fields(node=args.node)
    try:
        if args.metrics is not None:
            parse_listen(args.metrics)  # a bad address fails now, with the flag's name
        if args.config is not None:
            docs_from_yaml(args.config)  # fail fast on a broken file
        cred = load_credentials(args.mqtt_credentials) if args.mqtt_credentials else None
        trio.run(
            lambda: run_mapper(
                args.mqtt,
                protocol_name,
                make_factory,
                node=args.node,
                config_path=args.config,
                credentials=cred,
                metrics=args.metrics,
            )
        )
    except ConfigError as exc:
        print(f"{protocol_name}-mapper: {exc}")
        return 2
    except MetricsAddressError as exc:
        print(f"{protocol_name}-mapper: --metrics: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
