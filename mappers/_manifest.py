"""Device + DeviceModel documents (devices.kubeedge.io/v1beta1 shape) → plain records.

Two sources give the same record: the agent's membership DEV objects
(``{"id", "name", "namespace", "twin", "spec", "model"}``) and a local YAML file of
``kind: Device`` / ``kind: DeviceModel`` documents. Protocol-specific parsing
(Modbus registers, serial fields) happens in each mapper from ``protocol_config``
and each property's ``visitor``.

KubeEdge 1.22 lets a DeviceModel carry defaults: ``spec.protocolConfigData`` and
each model property's ``visitors``. They are merged into the device as edgecore
does: the model's map first, the device's keys on top (``configData`` key by
key), and only for properties the device lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mappers._errors import ConfigError

__all__ = ["DeviceDoc", "ModelProperty", "PropertyDoc", "doc_from_membership", "docs_from_yaml"]

DEFAULT_COLLECT_CYCLE_MS = 1000
MIN_COLLECT_CYCLE_MS = 10


@dataclass(frozen=True)
class ModelProperty:
    name: str
    type: str = "string"  # int | float | double | boolean | string
    read_only: bool = False
    minimum: float | None = None
    maximum: float | None = None
    unit: str = ""


@dataclass(frozen=True)
class PropertyDoc:
    name: str
    visitor: Mapping[str, Any]  # visitors.configData
    collect_cycle_ms: int
    model: ModelProperty
    desired: str | None = None
    report_to_cloud: bool = True


@dataclass(frozen=True)
class DeviceDoc:
    name: str
    namespace: str
    protocol_name: str
    protocol_config: Mapping[str, Any]
    properties: tuple[PropertyDoc, ...]
    twin: Mapping[str, Any] = field(default_factory=dict)

    def expected(self, prop: str) -> str | None:
        """The twin's expected (desired) value string for ``prop``, else the spec's."""
        entry = self.twin.get(prop)
        if isinstance(entry, Mapping):
            exp = entry.get("expected")
            if isinstance(exp, Mapping) and isinstance(exp.get("value"), str):
                return str(exp["value"])
        for p in self.properties:
            if p.name == prop:
                return p.desired
        return None


def _map(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _float_or_none(value: Any, where: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a number") from None


def _model_properties(model: Mapping[str, Any], where: str) -> dict[str, ModelProperty]:
    out: dict[str, ModelProperty] = {}
    for i, raw in enumerate(model.get("properties") or []):
        p = _map(raw, f"{where}.properties[{i}]")
        name = p.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.properties[{i}].name is required")
        access = str(p.get("accessMode") or "ReadWrite")
        if access not in ("ReadWrite", "ReadOnly"):
            raise ConfigError(f"{where}.properties[{i}].accessMode: ReadWrite or ReadOnly")
        out[name] = ModelProperty(
            name=name,
            type=str(p.get("type") or "string").lower(),
            read_only=access == "ReadOnly",
            minimum=_float_or_none(p.get("minimum"), f"{where}.properties[{i}].minimum"),
            maximum=_float_or_none(p.get("maximum"), f"{where}.properties[{i}].maximum"),
            unit=str(p.get("unit") or ""),
        )
    return out


def _merged(base: Mapping[str, Any], top: Mapping[str, Any]) -> Mapping[str, Any]:
    """``base`` with ``top``'s keys on top (one level, as edgecore merges)."""
    return {**base, **top} if base else top


def _model_visitors(model: Mapping[str, Any], where: str) -> dict[str, Mapping[str, Any]]:
    """The default ``visitors`` of each model property that has them."""
    out: dict[str, Mapping[str, Any]] = {}
    for i, raw in enumerate(model.get("properties") or []):
        if isinstance(raw, Mapping) and isinstance(raw.get("name"), str):
            visitors = _map(raw.get("visitors"), f"{where}.properties[{i}].visitors")
            if visitors:
                out[raw["name"]] = visitors
    return out


def build_doc(
    name: str,
    namespace: str,
    spec: Mapping[str, Any],
    model: Mapping[str, Any],
    twin: Mapping[str, Any] | None = None,
) -> DeviceDoc:
    where = f"device {namespace}/{name}"
    protocol = _map(spec.get("protocol"), f"{where} spec.protocol")
    model = _map(model, f"{where} model")
    protocol_name = str(protocol.get("protocolName") or model.get("protocol") or "")
    config = _merged(
        _map(model.get("protocolConfigData"), f"{where} model protocolConfigData"),
        _map(protocol.get("configData"), f"{where} spec.protocol.configData"),
    )
    models = _model_properties(model, f"{where} model")
    model_visitors = _model_visitors(model, f"{where} model")
    props: list[PropertyDoc] = []
    for i, raw in enumerate(spec.get("properties") or []):
        pw = f"{where} spec.properties[{i}]"
        p = _map(raw, pw)
        pname = p.get("name")
        if not isinstance(pname, str) or not pname:
            raise ConfigError(f"{pw}.name is required")
        own = _map(p.get("visitors"), f"{pw}.visitors")
        default = model_visitors.get(pname, {})
        visitors = {**default, **own}
        visitors["configData"] = _merged(
            _map(default.get("configData"), f"{where} model property {pname} visitors.configData"),
            _map(own.get("configData"), f"{pw}.visitors.configData"),
        )
        vproto = visitors.get("protocolName")
        if vproto and protocol_name and vproto != protocol_name:
            raise ConfigError(
                f"{pw}.visitors.protocolName {vproto!r} differs from {protocol_name!r}"
            )
        cycle_raw = p.get("collectCycle")
        try:
            cycle = DEFAULT_COLLECT_CYCLE_MS if cycle_raw in (None, 0, "") else int(cycle_raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{pw}.collectCycle: {cycle_raw!r} is not milliseconds") from None
        if cycle < MIN_COLLECT_CYCLE_MS:
            raise ConfigError(
                f"{pw}.collectCycle is in milliseconds and must be >= {MIN_COLLECT_CYCLE_MS}"
                f", got {cycle}"
            )
        desired = _map(p.get("desired"), f"{pw}.desired").get("value")
        props.append(
            PropertyDoc(
                name=pname,
                visitor=_map(visitors.get("configData"), f"{pw}.visitors.configData"),
                collect_cycle_ms=cycle,
                model=models.get(pname, ModelProperty(pname)),
                desired=None if desired is None else str(desired),
                report_to_cloud=bool(p.get("reportToCloud", True)),
            )
        )
    return DeviceDoc(
        name=name,
        namespace=namespace,
        protocol_name=protocol_name,
        protocol_config=config,
        properties=tuple(props),
        twin=dict(twin or {}),
    )


def doc_from_membership(dev: Mapping[str, Any]) -> DeviceDoc:
    """One DEV object of membership/get/result or membership/updated. Its ``id``
    is ``namespace/name`` (KubeEdge 1.16+; a bare name before)."""
    ident = dev.get("id")
    id_ns, _, id_name = ident.rpartition("/") if isinstance(ident, str) else ("", "", "")
    name = dev.get("name") or id_name
    if not isinstance(name, str) or not name:
        raise ConfigError("membership device without a name")
    twin = dev.get("twin")
    return build_doc(
        name,
        str(dev.get("namespace") or id_ns or "default"),
        _map(dev.get("spec"), f"device {name} spec"),
        _map(dev.get("model"), f"device {name} model"),
        twin if isinstance(twin, Mapping) else None,
    )


def docs_from_objects(objects: Iterable[Mapping[str, Any]], where: str) -> list[DeviceDoc]:
    """``kind: Device`` documents resolved against ``kind: DeviceModel`` documents."""
    models: dict[tuple[str, str], Mapping[str, Any]] = {}
    devices: list[Mapping[str, Any]] = []
    for i, obj in enumerate(objects):
        if obj is None:
            continue
        obj = _map(obj, f"{where} document {i}")
        kind = obj.get("kind")
        meta = _map(obj.get("metadata"), f"{where} document {i} metadata")
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where} document {i}: metadata.name is required")
        ns = str(meta.get("namespace") or "default")
        if kind == "DeviceModel":
            models[(ns, name)] = _map(obj.get("spec"), f"{where} DeviceModel {name} spec")
        elif kind == "Device":
            devices.append(obj)
        else:
            raise ConfigError(f"{where} document {i}: kind {kind!r} (Device or DeviceModel)")
    out = []
    for obj in devices:
        meta = obj["metadata"]
        name, ns = meta["name"], str(meta.get("namespace") or "default")
        spec = _map(obj.get("spec"), f"{where} Device {name} spec")
        ref = _map(spec.get("deviceModelRef"), f"{where} Device {name} spec.deviceModelRef")
        model_name = ref.get("name")
        if model_name is None:
            model: Mapping[str, Any] = {}
        elif (ns, model_name) in models:
            model = models[(ns, model_name)]
        else:
            raise ConfigError(f"{where} Device {name}: DeviceModel {model_name!r} not in the file")
        out.append(build_doc(name, ns, spec, model))
    return out


def docs_from_yaml(path: Path) -> list[DeviceDoc]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    import yaml  # standalone mode only: a mapper following the agent never loads it

    try:
        loaded = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML: {exc}") from None
    objects: list[Any] = []
    for item in loaded:
        objects.extend(item if isinstance(item, list) else [item])
    return docs_from_objects(objects, str(path))
