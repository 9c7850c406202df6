"""KubeEdge's DMI in the agent: v1beta1 mappers register and report over gRPC.

A mapper built on kubeedge/mapper-framework calls ``DeviceManagerService`` on the
agent's unix socket (``dmi = "unix:///run/edgeflock/dmi.sock"`` in agent.toml):

* ``MapperRegister``: the agent records the mapper (name, protocol, the socket
  of its own ``DeviceMapperService``) and, with ``withData``, answers with this
  node's devices whose ``spec.protocol.protocolName`` is the mapper's protocol
  and their models (without ``withData`` it is taken to have them already).
  One mapper per protocol, as in edgecore: a later registration for the
  protocol replaces the earlier one.
* ``ReportDeviceStatus`` / ``ReportDeviceStates``: the reported values and the
  state go through :class:`DeviceTwin` exactly like a twin update or state
  update on MQTT (same merge, storage, cloud report), and are answered once
  they are committed to the agent's store.

Afterwards the agent pushes every change of those devices and models to the
mapper (``CreateDeviceModel``/``UpdateDeviceModel``/``RegisterDevice``/
``UpdateDevice``/``RemoveDevice``/``RemoveDeviceModel``). Pushing is
level-triggered: each mapper has one task that compares what the mapper was
told with the node's current objects, so a burst of changes costs no queue. A
mapper that cannot be reached is retried with backoff and forgotten after
:data:`FORGET_AFTER` seconds; one that answers an error for an object is not
asked again until the object changes. The registered mappers and what each was
told are kept in the store's state (:data:`STATE_KEY`) and followed again after
the agent restarts, as edgecore does: a mapper registers only when it starts.

Threads: grpcio's server runs handlers on its own small thread pool; each
handler hands its request to trio (``trio.from_thread.run``) and blocks until
trio answers, so all state lives in the trio thread. At most
:data:`MAX_RPCS` calls are in progress; grpcio answers RESOURCE_EXHAUSTED
beyond that, and a request over :data:`MAX_MESSAGE` bytes is refused the same
way before it is decoded. grpc is imported only when ``dmi`` is configured.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import trio
from google.protobuf import any_pb2, wrappers_pb2

import edgeproto
from edgeproto import twin as tw
from edgeproto.twin import TwinError

from . import _dmi_api_pb2
from ._config import AgentConfig
from ._errors import AgentError
from ._meta import Meta
from ._twin import DeviceTwin

log = logging.getLogger(__name__)

__all__ = ["DmiError", "DmiServer", "device_message", "model_message"]

pb: Any = _dmi_api_pb2
MANAGER = "/v1beta1.DeviceManagerService/"
MAPPER = "/v1beta1.DeviceMapperService/"
MAX_MESSAGE = 1 << 20  # bytes of one request (a device list answer may be larger)
MAX_RPCS = 64  # calls in progress at once; grpcio refuses more (RESOURCE_EXHAUSTED)
WORKERS = 16  # gRPC threads (made on demand); each waits for its report's commit
MAX_STATE = 64  # characters of a device state
PUSH_TIMEOUT = 5.0  # seconds for one call to a mapper
COMMIT_TIMEOUT = 10.0  # a report not committed by then is answered UNAVAILABLE
BACKOFF_FIRST, BACKOFF_CAP = 0.5, 30.0
FORGET_AFTER = 300.0  # a mapper unreachable this long is forgotten
STATE_KEY = "dmi_mappers"  # the registered mappers, in the store's state table


class DmiError(AgentError):
    """A DMI request refused: ``code`` is the gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_TWIN_CODES = {tw.CONFLICT: "ABORTED", tw.BAD_REQUEST: "INVALID_ARGUMENT"}


def _refusal(err: TwinError) -> DmiError:
    """The twin's refusal as a gRPC status. The device is on this node (checked
    first), so a twin that does not know it yet has not caught up with the
    store: a transient UNAVAILABLE, as a report a moment later succeeds."""
    if err.code == tw.NOT_FOUND:
        return DmiError("UNAVAILABLE", f"{err.reason}: not loaded yet, report again")
    return DmiError(_TWIN_CODES.get(err.code, "INTERNAL"), err.reason)


# ---- CRD JSON -> DMI messages -----------------------------------------------------------


def _pack(value: Any) -> Any:
    """One ``configData`` value as KubeEdge packs it (a protobuf wrapper in an
    Any; the wrappers mapper-framework decodes). Values with no wrapper
    (objects, lists, null) travel as their JSON text in a StringValue."""
    if isinstance(value, bool):
        wrapped: Any = wrappers_pb2.BoolValue(value=value)
    elif isinstance(value, int) and -(1 << 31) <= value < 1 << 31:
        wrapped = wrappers_pb2.Int32Value(value=value)
    elif isinstance(value, int) and -(1 << 63) <= value < 1 << 63:
        wrapped = wrappers_pb2.Int64Value(value=value)
    elif isinstance(value, float):
        wrapped = wrappers_pb2.FloatValue(value=value)  # KubeEdge sends float32 too
    elif isinstance(value, str):
        wrapped = wrappers_pb2.StringValue(value=value)
    else:
        wrapped = wrappers_pb2.StringValue(value=json.dumps(value, sort_keys=True))
    out = any_pb2.Any()
    out.Pack(wrapped)
    return out


def _customized(data: Any) -> Any:
    out = pb.CustomizedValue()
    if isinstance(data, dict):
        for k, v in data.items():
            out.data[str(k)].CopyFrom(_pack(v))
    return out


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _twin_property(v: Any) -> Any:
    d = _dict(v)
    meta = {str(k): str(x) for k, x in _dict(d.get("metadata")).items()}
    value = d.get("value")
    return pb.TwinProperty(value=value if isinstance(value, str) else "", metadata=meta)


def device_message(obj: dict[str, Any]) -> Any:
    """A stored v1beta1 Device as DMI's ``Device``. Every property carries
    ``desired`` and ``visitors`` (mapper-framework reads them without checking)."""
    meta, spec = _dict(obj.get("metadata")), _dict(obj.get("spec"))
    protocol = _dict(spec.get("protocol"))
    dev = pb.Device(name=str(meta.get("name", "")), namespace=str(meta.get("namespace", "")))
    dev.spec.deviceModelReference = str(_dict(spec.get("deviceModelRef")).get("name", ""))
    dev.spec.protocol.protocolName = str(protocol.get("protocolName", ""))
    dev.spec.protocol.configData.CopyFrom(_customized(protocol.get("configData")))
    for p in spec.get("properties") or []:
        if not isinstance(p, dict):
            continue
        visitors = _dict(p.get("visitors"))
        prop = dev.spec.properties.add(
            name=str(p.get("name", "")),
            reportCycle=_int(p.get("reportCycle")),
            collectCycle=_int(p.get("collectCycle")),
            reportToCloud=p.get("reportToCloud") is True,
        )
        prop.desired.CopyFrom(_twin_property(p.get("desired")))
        prop.visitors.protocolName = str(visitors.get("protocolName", ""))
        prop.visitors.configData.CopyFrom(_customized(visitors.get("configData")))
    for m in spec.get("methods") or []:
        if isinstance(m, dict):
            names = [str(n) for n in m.get("propertyNames") or []]
            dev.spec.methods.add(
                name=str(m.get("name", "")),
                description=str(m.get("description", "")),
                propertyNames=names,
            )
    status = _dict(obj.get("status"))
    for t in status.get("twins") or []:
        if isinstance(t, dict):
            twin = dev.status.twins.add(propertyName=str(t.get("propertyName", "")))
            if "reported" in t:
                twin.reported.CopyFrom(_twin_property(t["reported"]))
            if "observedDesired" in t:
                twin.observedDesired.CopyFrom(_twin_property(t["observedDesired"]))
    state = _dict(spec.get("status"))  # KubeEdge 1.16+: spec.status.{reportToCloud,reportCycle}
    dev.status.reportToCloud = state.get("reportToCloud") is True
    dev.status.reportCycle = _int(state.get("reportCycle"))
    return dev


def model_message(obj: dict[str, Any]) -> Any:
    """A stored v1beta1 DeviceModel as DMI's ``DeviceModel``."""
    meta, spec = _dict(obj.get("metadata")), _dict(obj.get("spec"))
    model = pb.DeviceModel(name=str(meta.get("name", "")), namespace=str(meta.get("namespace", "")))
    for p in spec.get("properties") or []:
        if isinstance(p, dict):
            model.spec.properties.add(
                **{
                    k: str(p[k])
                    for k in ("name", "description", "type", "accessMode", "minimum", "maximum")
                    if p.get(k) is not None
                },
                unit=str(p.get("unit", "")),
            )
    return model


# ---- the node's devices, by protocol ----------------------------------------------------

Ref = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class _Item:
    message: Any
    fingerprint: str  # of the serialized message


@dataclass(frozen=True, slots=True)
class _View:
    devices: dict[Ref, tuple[str, _Item]]  # -> (protocol, message)
    models: dict[Ref, tuple[str, _Item]]  # -> (spec.protocol, message)

    def for_protocol(self, protocol: str) -> tuple[dict[Ref, _Item], dict[Ref, _Item]]:
        """The devices of ``protocol`` and the models they use or that name it."""
        devices = {r: item for r, (proto, item) in self.devices.items() if proto == protocol}
        wanted = {(r[0], item.message.spec.deviceModelReference) for r, item in devices.items()}
        models = {
            r: item
            for r, (proto, item) in self.models.items()
            if r in wanted or (proto and proto == protocol)
        }
        return devices, models


def _item(message: Any) -> _Item:
    data = message.SerializeToString(deterministic=True)
    return _Item(message, hashlib.sha256(data).hexdigest()[:32])


async def _load_view(meta: Meta) -> _View:
    devices: dict[Ref, tuple[str, _Item]] = {}
    models: dict[Ref, tuple[str, _Item]] = {}
    for resource, out in (("devices", devices), ("devicemodels", models)):
        for key, obj in await meta.list_objects(resource):
            try:
                _, ns, name = edgeproto.split_key(key)
            except edgeproto.ProtocolError:
                continue
            if resource == "devices":
                msg = device_message(obj)
                out[(ns, name)] = (msg.spec.protocol.protocolName, _item(msg))
            else:
                proto = _dict(obj.get("spec")).get("protocol")
                out[(ns, name)] = (
                    proto if isinstance(proto, str) else "",
                    _item(model_message(obj)),
                )
    return _View(devices, models)


# ---- registered mappers -------------------------------------------------------------------


@dataclass
class _Mapper:
    name: str
    protocol: str
    address: str
    told_devices: dict[Ref, str]  # what the mapper has (fingerprints)
    told_models: dict[Ref, str]
    wake: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class _Unreachable(Exception):
    """A call to a mapper did not reach it (or got no answer)."""


_UNREACHABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"})


def _target(address: str) -> str:
    return address if address.startswith("unix:") else f"unix://{os.path.abspath(address)}"


class DmiServer:
    def __init__(self, config: AgentConfig, meta: Meta, twin: DeviceTwin) -> None:
        assert config.dmi is not None
        self._path = Path(config.dmi.removeprefix("unix://"))
        self._node = config.node
        self._meta = meta
        self._twin = twin
        self._view = _View({}, {})
        self._view_gen = -1  # the store's generation the view was read at
        self._mappers: dict[str, _Mapper] = {}  # by protocol
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.counters: Counter[str] = Counter()

    def statistics(self) -> dict[str, int]:
        return {"mappers": len(self._mappers), **self.counters}

    # ---- the service ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        await self._refresh()
        async with trio.open_nursery() as nursery:  # the mappers' pushers
            self._nursery = nursery
            await self._restore()
            server, inode = await trio.to_thread.run_sync(self._start_server)
            log.info("dmi: serving KubeEdge's DMI on %s", self._path)
            try:
                task_status.started()
                while True:
                    await self._meta.wait_changed(self._view_gen)
                    await self._refresh()
                    for m in self._mappers.values():
                        m.wake.set()
            finally:
                self._nursery = None
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(lambda: server.stop(None).wait(5))
                _unlink_if(self._path, inode)
                self._mappers.clear()

    async def _restore(self) -> None:
        """Follow the mappers registered before a restart, as edgecore does (a
        mapper registers only when it starts): what each was told is kept, so
        what changed meanwhile is pushed to it."""
        saved = await self._meta.get_state(STATE_KEY, {})
        for protocol, rec in (saved if isinstance(saved, dict) else {}).items():
            try:
                name, address = str(rec["name"]), str(rec["address"])
                devices, models = _refs(rec["devices"]), _refs(rec["models"])
                mapper = _Mapper(name, str(protocol), address, devices, models)
            except (KeyError, TypeError, AttributeError):
                log.warning("dmi: dropping an unreadable saved mapper for %s", protocol)
                continue
            self._mappers[mapper.protocol] = mapper
            assert self._nursery is not None
            self._nursery.start_soon(self._push, mapper)
            log.info("dmi: following mapper %s (%s) again", mapper.name, protocol)

    async def _save(self) -> None:
        saved = {
            m.protocol: {
                "name": m.name,
                "address": m.address,
                "devices": {f"{ns}/{n}": fp for (ns, n), fp in m.told_devices.items()},
                "models": {f"{ns}/{n}": fp for (ns, n), fp in m.told_models.items()},
            }
            for m in self._mappers.values()
        }
        await self._meta.set_state(**{STATE_KEY: saved})

    async def _refresh(self) -> None:
        """Read the node's devices and models again if they changed."""
        gen = self._meta.generation
        if gen != self._view_gen:
            self._view = await _load_view(self._meta)
            self._view_gen = gen

    def _start_server(self) -> tuple[Any, int]:
        """Bind the socket in a private directory, make it 0600, then move it onto
        the configured path (replacing a stale socket of a killed agent)."""
        path = self._path
        path.parent.mkdir(parents=True, exist_ok=True)
        _refuse_live(path)
        server = grpc.server(
            ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="dmi"),
            handlers=[self._handlers()],
            maximum_concurrent_rpcs=MAX_RPCS,
            options=[("grpc.max_receive_message_length", MAX_MESSAGE)],
        )
        private = tempfile.mkdtemp(prefix=".dmi-", dir=path.parent)  # mode 0700
        tmp = Path(private) / "s"
        try:
            if not server.add_insecure_port(f"unix://{tmp}"):
                raise DmiError("UNAVAILABLE", f"dmi: cannot listen on {path}")
            server.start()
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            server.stop(None)
            raise
        finally:
            shutil.rmtree(private, ignore_errors=True)
        return server, path.stat().st_ino

    def _handlers(self) -> Any:
        calls: dict[str, tuple[Any, Callable[[Any], Any]]] = {
            "MapperRegister": (pb.MapperRegisterRequest, self._register),
            "ReportDeviceStatus": (pb.ReportDeviceStatusRequest, self._report_status),
            "ReportDeviceStates": (pb.ReportDeviceStatesRequest, self._report_states),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                functools.partial(self._handle, name, fn),
                request_deserializer=req.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )
            for name, (req, fn) in calls.items()
        }
        return grpc.method_handlers_generic_handler("v1beta1.DeviceManagerService", handlers)

    def _handle(self, name: str, fn: Callable[[Any], Any], request: Any, context: Any) -> Any:
        """A gRPC thread: run ``fn`` in trio and wait for its answer."""
        assert self._token is not None
        try:
            answer, code, message = trio.from_thread.run(
                self._serve, name, fn, request, trio_token=self._token
            )
        except trio.RunFinishedError:
            answer, code, message = None, "UNAVAILABLE", "the agent is stopping"
        if code:
            context.abort(getattr(grpc.StatusCode, code), message)
        return answer

    async def _serve(
        self, name: str, fn: Callable[[Any], Any], request: Any
    ) -> tuple[Any, str, str]:
        """In trio: (answer, "", "") or (None, gRPC status name, message)."""
        try:
            answer = await fn(request)
        except DmiError as exc:
            self.counters[f"{name}_{exc.code.lower()}"] += 1
            log.debug("dmi: %s refused: %s %s", name, exc.code, exc)
            return None, exc.code, str(exc)
        except Exception:
            self.counters[f"{name}_internal"] += 1
            log.exception("dmi: %s failed", name)
            return None, "INTERNAL", "the agent failed to handle the request"
        self.counters[f"{name}_ok"] += 1
        return answer, "", ""

    # ---- DeviceManagerService (trio) ------------------------------------------------------

    async def _register(self, req: Any) -> Any:
        info = req.mapper
        if not info.name or not info.protocol:
            raise DmiError("INVALID_ARGUMENT", "mapper name and protocol must not be empty")
        try:
            address = info.address.decode()
        except UnicodeDecodeError:
            raise DmiError("INVALID_ARGUMENT", "mapper address is not UTF-8") from None
        if not address:
            raise DmiError("INVALID_ARGUMENT", "mapper address (its unix socket) is empty")
        await self._refresh()
        if self._nursery is None:
            raise DmiError("UNAVAILABLE", "the agent is stopping")
        devices, models = self._view.for_protocol(info.protocol)
        old = self._mappers.pop(info.protocol, None)
        if old is not None:
            old.scope.cancel()
        mapper = _Mapper(
            info.name,
            info.protocol,
            address,
            {r: i.fingerprint for r, i in devices.items()},
            {r: i.fingerprint for r, i in models.items()},
        )
        self._mappers[info.protocol] = mapper
        self._nursery.start_soon(self._push, mapper)
        await self._save()
        log.info(
            "dmi: mapper %s (%s) registered at %s with %d devices",
            info.name,
            info.protocol,
            address,
            len(devices),
        )
        if not req.withData:
            return pb.MapperRegisterResponse()
        return pb.MapperRegisterResponse(
            deviceList=[i.message for _, i in sorted(devices.items())],
            modelList=[i.message for _, i in sorted(models.items())],
        )

    async def _device(self, name: str, namespace: str) -> str:
        """The id (``namespace/name``) of a device on this node; DmiError otherwise.
        An empty namespace is ``default``."""
        if not name:
            raise DmiError("INVALID_ARGUMENT", "deviceName must not be empty")
        await self._refresh()
        ref = (namespace or "default", name)
        if ref not in self._view.devices:
            raise DmiError("NOT_FOUND", f"device {ref[0]}/{name} is not on node {self._node}")
        return f"{ref[0]}/{name}"

    async def _committed(self) -> None:
        with trio.move_on_after(COMMIT_TIMEOUT) as scope:
            await self._twin.wait_flushed()
        if scope.cancelled_caught:
            raise DmiError("UNAVAILABLE", "not yet written to the agent's store; report again")

    async def _report_status(self, req: Any) -> Any:
        dev = await self._device(req.deviceName, req.deviceNamespace)
        twins = [t for t in req.reportedDevice.twins if t.HasField("reported")]
        if not twins:
            raise DmiError("INVALID_ARGUMENT", "ReportDeviceStatusRequest has no reported twins")
        # KubeEdge's edgecore turns each twin into a twin update of its actual
        # value; the edge stamps the time (a mapper's timestamp is not trusted).
        # The mapper's observedDesired is not written back as a desired value.
        body = {
            "event_id": "",
            "timestamp": 0,
            "twin": {t.propertyName: {"actual": {"value": t.reported.value}} for t in twins},
        }
        try:
            self._twin.update(dev, tw.parse_update(json.dumps(body).encode()))
        except TwinError as err:
            raise _refusal(err) from None
        await self._committed()
        return pb.ReportDeviceStatusResponse()

    async def _report_states(self, req: Any) -> Any:
        dev = await self._device(req.deviceName, req.deviceNamespace)
        if not req.state or len(req.state) > MAX_STATE:
            raise DmiError("INVALID_ARGUMENT", f"state must be 1-{MAX_STATE} characters")
        try:
            self._twin.set_state(dev, req.state)
        except TwinError as err:
            raise _refusal(err) from None
        await self._committed()
        return pb.ReportDeviceStatesResponse()

    # ---- DeviceMapperService (pushes) -----------------------------------------------------

    async def _push(self, mapper: _Mapper) -> None:
        channel = grpc.insecure_channel(_target(mapper.address))
        try:
            with mapper.scope:
                await self._follow(mapper, channel)
        finally:
            channel.close()
            if self._mappers.get(mapper.protocol) is mapper:
                del self._mappers[mapper.protocol]

    async def _follow(self, mapper: _Mapper, channel: Any) -> None:
        delay = BACKOFF_FIRST
        failing_since: float | None = None
        while True:
            mapper.wake = trio.Event()
            told = (dict(mapper.told_devices), dict(mapper.told_models))
            try:
                await self._reconcile(mapper, channel)
            except _Unreachable as exc:
                if told != (mapper.told_devices, mapper.told_models):
                    await self._save()
                now = trio.current_time()
                if failing_since is None:
                    failing_since = now
                    log.warning("dmi: mapper %s unreachable (%s); retrying", mapper.name, exc)
                if now - failing_since >= FORGET_AFTER:
                    self.counters["mappers_forgotten"] += 1
                    log.warning("dmi: forgetting mapper %s (unreachable)", mapper.name)
                    if self._mappers.get(mapper.protocol) is mapper:
                        del self._mappers[mapper.protocol]
                    await self._save()
                    return
                self.counters["push_retries"] += 1
                await trio.sleep(delay)
                delay = min(delay * 2, BACKOFF_CAP)
                continue
            if told != (mapper.told_devices, mapper.told_models):
                await self._save()
            failing_since, delay = None, BACKOFF_FIRST
            await mapper.wake.wait()

    async def _reconcile(self, mapper: _Mapper, channel: Any) -> None:
        """Tell the mapper what changed since it was last told: models before the
        devices that use them, device removals before model removals."""
        devices, models = self._view.for_protocol(mapper.protocol)
        for ref, item in sorted(models.items()):
            if mapper.told_models.get(ref) != item.fingerprint:
                new = ref not in mapper.told_models
                method = "CreateDeviceModel" if new else "UpdateDeviceModel"
                req = (pb.CreateDeviceModelRequest if new else pb.UpdateDeviceModelRequest)(
                    model=item.message
                )
                await self._call(mapper, channel, method, req)
                mapper.told_models[ref] = item.fingerprint
        for ref, item in sorted(devices.items()):
            if mapper.told_devices.get(ref) != item.fingerprint:
                new = ref not in mapper.told_devices
                method = "RegisterDevice" if new else "UpdateDevice"
                req = (pb.RegisterDeviceRequest if new else pb.UpdateDeviceRequest)(
                    device=item.message
                )
                await self._call(mapper, channel, method, req)
                mapper.told_devices[ref] = item.fingerprint
        for ref in sorted(set(mapper.told_devices) - set(devices)):
            req = pb.RemoveDeviceRequest(deviceNamespace=ref[0], deviceName=ref[1])
            await self._call(mapper, channel, "RemoveDevice", req)
            del mapper.told_devices[ref]
        for ref in sorted(set(mapper.told_models) - set(models)):
            req = pb.RemoveDeviceModelRequest(modelNamespace=ref[0], modelName=ref[1])
            await self._call(mapper, channel, "RemoveDeviceModel", req)
            del mapper.told_models[ref]

    async def _call(self, mapper: _Mapper, channel: Any, method: str, request: Any) -> None:
        """One call; _Unreachable when it did not reach the mapper. An error the
        mapper answers is logged and counted: the object is not sent again until
        it changes (the same request would be refused again)."""
        response = getattr(pb, method + "Response")
        stub = channel.unary_unary(
            MAPPER + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString,
        )
        try:
            await trio.to_thread.run_sync(
                functools.partial(stub, request, timeout=PUSH_TIMEOUT), abandon_on_cancel=True
            )
        except grpc.RpcError as exc:
            code = exc.code()
            name = code.name if code is not None else "UNKNOWN"
            if name in _UNREACHABLE:
                raise _Unreachable(f"{method}: {name}") from None
            self.counters[f"push_refused_{method}"] += 1
            log.warning(
                "dmi: mapper %s refused %s: %s %s", mapper.name, method, name, exc.details()
            )
            return
        self.counters[f"push_{method}"] += 1


def _refs(saved: Any) -> dict[Ref, str]:
    """``{"NS/NAME": fingerprint}`` as saved, back to refs."""
    out: dict[Ref, str] = {}
    for key, fingerprint in saved.items():
        ns, _, name = str(key).partition("/")
        out[(ns, name)] = str(fingerprint)
    return out


def _refuse_live(path: Path) -> None:
    """Fail if another process serves ``path``; a stale socket is left for the
    rename to replace."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise DmiError("ALREADY_EXISTS", f"dmi: {path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return  # nobody listens: a killed agent's socket
    raise DmiError("ALREADY_EXISTS", f"dmi: {path} is served by another process")


def _unlink_if(path: Path, inode: int) -> None:
    """Remove the socket on exit unless another agent has replaced it since."""
    try:
        if path.lstat().st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass
