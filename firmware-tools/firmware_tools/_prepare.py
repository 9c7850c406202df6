"""``edgeflash prepare``: copy an image and bake the agent into it, without mounting."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from edgeproto.labels import LabelError, parse_labels

from . import _firstboot as fb
from ._bundle import Bundle, load_bundle
from ._disk import read_layout
from ._errors import BadInput, FilesystemFull, FlashError, VerifyFailed
from ._ext4 import Dir, Ext4Volume, File, Symlink
from ._fat import FatVolume
from ._image import PiLayout
from ._pios import BootSettings, boot_files

__all__ = [
    "JoinToken",
    "PrepareOptions",
    "PrepareResult",
    "WrittenFile",
    "parse_gateway_url",
    "parse_token",
    "prepare_image",
]

_TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})\.([0-9a-f]{64})$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_NODE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_KEY_TYPES = ("ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-")


@dataclass(frozen=True, slots=True)
class JoinToken:
    id: str
    secret: str
    pin: str  # hex SHA-256 of the gateway CA certificate

    def __str__(self) -> str:
        return f"{self.id}.{self.secret}.{self.pin}"


def parse_token(token: str) -> JoinToken:
    m = _TOKEN.match(token.strip())
    if m is None:
        raise BadInput(
            "malformed join token: expected <id>.<secret>.<pin> (6 and 16 lowercase "
            "letters/digits, then 64 hex digits) as printed by 'cloudgateway token create'"
        )
    return JoinToken(*m.groups())


def parse_gateway_url(url: str) -> str:
    """The gateway's join endpoint, https://HOST[:PORT], normalised (no trailing slash)."""
    try:
        u = urllib.parse.urlsplit(url.strip())
        port = u.port
    except ValueError as exc:
        raise BadInput(f"malformed gateway URL {url!r}: {exc}") from None
    if u.scheme != "https" or not u.hostname:
        raise BadInput(f"malformed gateway URL {url!r}: expected https://HOST:PORT")
    if u.path not in ("", "/") or u.query or u.fragment or u.username or u.password:
        raise BadInput(f"malformed gateway URL {url!r}: no path, query or credentials allowed")
    if any(c.isspace() or c in "'\"`$\\" for c in url.strip()):
        raise BadInput(f"malformed gateway URL {url!r}")
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    return f"https://{host}" + (f":{port}" if port is not None else "")


def _check_hostname(name: str, what: str) -> str:
    if not _LABEL.match(name):
        raise BadInput(f"invalid {what} {name!r}: 1-63 lowercase letters, digits or '-'")
    return name


def _read_ssh_keys(path: Path) -> tuple[str, ...]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read SSH key {path}: {exc}") from None
    if "PRIVATE KEY" in text:
        raise BadInput(f"{path} is a private key: pass the .pub file")
    keys = tuple(ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#"))
    if not keys or not all(k.startswith(_KEY_TYPES) for k in keys):
        raise BadInput(f"{path} is not an OpenSSH public key file")
    return keys


@dataclass(frozen=True, slots=True)
class PrepareOptions:
    image: Path
    output: Path
    gateway: str
    token: str
    node: str | None = None
    hostname: str | None = None
    user: str = "pi"
    password_hash: str | None = None
    ssh_key: Path | None = None
    wifi_ssid: str | None = None
    wifi_psk: str | None = None
    wifi_country: str = "GB"
    bundle: Path | None = None
    # Local MQTT with the agent's per-client credentials and ACLs (off: anonymous).
    mqtt_auth: bool = True
    # Node labels the board asks for at its first-boot join ("k=v,k2=v2"), written
    # to the agent's agent.toml.
    labels: str = ""
    # Mappers to run as services beside the agent ("modbus", "serial").
    mappers: tuple[str, ...] = ()
    # The fleet's release public key (edgectl upgrade keygen's release.pub): the
    # board's first-boot join keeps it, and the agent installs only releases it signed.
    release_key: Path | None = None


@dataclass(frozen=True, slots=True)
class WrittenFile:
    partition: str  # "boot" or "root"
    path: str
    size: int
    sha256: str
    mode: int = 0o644


@dataclass(frozen=True, slots=True)
class PrepareResult:
    output: Path
    layout: PiLayout
    node: str
    files: tuple[WrittenFile, ...] = field(default=())


def read_release_key(path: Path) -> bytes:
    """An Ed25519 public key in PEM (SubjectPublicKeyInfo), as edgectl upgrade
    keygen writes release.pub; BadInput otherwise (a private key above all)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"--release-key {path}: {exc.strerror or exc}") from None
    if b"PRIVATE KEY" in data:
        raise BadInput(f"--release-key {path} is a private key: pass the public key (release.pub)")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise BadInput(
            f"--release-key {path} is not an Ed25519 public key in PEM "
            "(edgectl upgrade keygen writes one: release.pub)"
        )
    return data


def _validate(
    o: PrepareOptions,
) -> tuple[JoinToken, str, str, BootSettings, Bundle | None, dict[str, str]]:
    token = parse_token(o.token)
    gateway = parse_gateway_url(o.gateway)
    node = o.node or o.hostname
    if node is None:
        raise BadInput("--node NAME is required (the name the token was created for)")
    if len(node) > 253 or not _NODE.match(node):
        raise BadInput(f"invalid node name {node!r}: use a DNS-1123 subdomain")
    hostname = _check_hostname(o.hostname or node.split(".")[0], "hostname")
    if not _USER.match(o.user):
        raise BadInput(f"invalid user name {o.user!r}")
    if o.password_hash is not None and (":" in o.password_hash or not o.password_hash.strip()):
        raise BadInput("--password-hash must be a crypt(3) string such as openssl passwd -6 makes")
    keys = _read_ssh_keys(o.ssh_key) if o.ssh_key else ()
    if (o.wifi_ssid is None) != (o.wifi_psk is None):
        raise BadInput("--wifi-ssid and --wifi-psk go together")
    if o.wifi_ssid is not None and o.wifi_psk is not None:
        if not 1 <= len(o.wifi_ssid.encode()) <= 32:
            raise BadInput("--wifi-ssid must be 1-32 bytes")
        hex64 = re.fullmatch(r"[0-9a-fA-F]{64}", o.wifi_psk) is not None
        if not (8 <= len(o.wifi_psk) <= 63 or hex64):
            raise BadInput("--wifi-psk must be 8-63 characters (or 64 hex digits)")
    if not re.fullmatch(r"[A-Z]{2}", o.wifi_country):
        raise BadInput(f"--wifi-country must be two capital letters, not {o.wifi_country!r}")
    settings = BootSettings(
        hostname=hostname,
        user=o.user,
        password_hash=o.password_hash or "*",
        ssh_keys=keys,
        wifi_ssid=o.wifi_ssid,
        wifi_psk=o.wifi_psk,
        wifi_country=o.wifi_country,
    )
    try:
        labels = parse_labels(o.labels)
    except LabelError as exc:
        raise BadInput(f"--labels: {exc}") from None
    for protocol in o.mappers:
        if protocol not in fb.MAPPERS:
            raise BadInput(f"--mapper must be one of {', '.join(fb.MAPPERS)}, not {protocol!r}")
    if o.mappers and o.bundle is None:
        raise BadInput("--mapper needs --bundle: the mapper is installed from the bundle")
    if o.release_key is not None:
        read_release_key(o.release_key)
    bundle = load_bundle(o.bundle) if o.bundle is not None else None
    return token, gateway, node, settings, bundle, labels


def _components(bundle: Bundle | None, root: Ext4Volume, mappers: tuple[str, ...]) -> fb.Components:
    """What the board will run besides the agent: what the bundle carries as .debs,
    or what the image has already (Debian's mosquitto and containerd in /usr)."""
    carried = bundle.components if bundle else fb.Components()
    mosquitto = carried.mosquitto or root.exists("/usr/sbin/mosquitto")
    if mappers and not mosquitto:
        raise BadInput("--mapper needs mosquitto: neither the image nor the bundle has it")
    return fb.Components(
        mosquitto=mosquitto,
        containerd=carried.containerd
        or (root.exists("/usr/bin/containerd") and root.exists("/usr/sbin/runc")),
        mappers=mappers,
    )


def _root_files(
    token: JoinToken,
    gateway: str,
    node: str,
    bundle: Bundle | None,
    *,
    components: fb.Components,
    mqtt_auth: bool = True,
    labels: dict[str, str] | None = None,
    release_key: bytes | None = None,
) -> tuple[list[Dir], list[File], list[Symlink]]:
    auth = mqtt_auth
    unit_dir = fb.UNIT_DIR
    dirs = [
        Dir("/etc/edgeflock", 0o755),
        Dir("/usr/local/lib/edgeflock", 0o755),
        Dir("/opt/edgeflock", 0o755),
        Dir("/var/lib/edgeflock", 0o755),
        Dir(fb.DATA_DIR, 0o700),
        Dir("/etc/systemd/system/multi-user.target.wants", 0o755),
    ]
    conf = fb.conf_file(
        gateway=gateway, ca_pin=f"sha256:{token.pin}", node=node, components=components
    )
    files = [
        File(fb.CONF_PATH, conf.encode(), 0o644),
        File(fb.TOKEN_PATH, f"{token}\n".encode(), 0o600),
        File(fb.FIRSTBOOT_SCRIPT, fb.firstboot_script().encode(), 0o755),
        File(f"{unit_dir}/{fb.FIRSTBOOT_UNIT}", fb.firstboot_unit().encode()),
        File(f"{unit_dir}/{fb.AGENT_UNIT}", fb.agent_unit(components, mqtt_auth=auth).encode()),
    ]
    if labels:  # read by the first boot's 'edgeagent join'
        files.append(File(f"{fb.DATA_DIR}/agent.toml", fb.agent_toml(labels).encode(), 0o600))
    if release_key is not None:  # passed to the first boot's 'edgeagent join'
        files.append(File(fb.RELEASE_KEY_PATH, release_key, 0o644))
    if components.mosquitto:
        conf, unit = fb.mosquitto_config(mqtt_auth=auth), fb.mosquitto_unit(mqtt_auth=auth)
        files.append(File("/etc/edgeflock/mosquitto.conf", conf.encode()))
        files.append(File(f"{unit_dir}/{fb.MOSQUITTO_UNIT}", unit.encode()))
    for protocol in components.mappers:
        unit = fb.mapper_unit(protocol, node, mqtt_auth=auth)
        files.append(File(f"{unit_dir}/{fb.mapper_unit_name(protocol)}", unit.encode()))
    if components.containerd:
        sandbox = bundle.sandbox_image if bundle else None
        conf = fb.containerd_config(sandbox)
        files.append(File("/etc/edgeflock/containerd.toml", conf.encode()))
        files.append(File(f"{unit_dir}/{fb.CONTAINERD_UNIT}", fb.containerd_unit().encode()))
        dirs.append(Dir(fb.CNI_CONF_DIR, 0o755))
        cni = fb.cni_config().encode()
        files.append(File(f"{fb.CNI_CONF_DIR}/10-edgeflock.conflist", cni))
    if bundle is not None:
        dirs.append(Dir(fb.BUNDLE_DIR, 0o755))
        subdirs = sorted({f.path.rsplit("/", 1)[0] for f in bundle.files if "/" in f.path})
        dirs += [Dir(f"{fb.BUNDLE_DIR}/{d}", 0o755) for d in subdirs]
        for name in ("manifest.json", "SHA256SUMS"):
            files.append(File(f"{fb.BUNDLE_DIR}/{name}", (bundle.root / name).read_bytes()))
        for bf in bundle.files:
            files.append(File(f"{fb.BUNDLE_DIR}/{bf.path}", (bundle.root / bf.path).read_bytes()))
    links = [
        Symlink(
            f"{unit_dir}/multi-user.target.wants/{fb.FIRSTBOOT_UNIT}",
            f"{unit_dir}/{fb.FIRSTBOOT_UNIT}",
        )
    ]
    return dirs, files, links


def _needed(files: list[File], block: int = 4096) -> int:
    return sum((len(f.data) + block - 1) // block * block + block for f in files) + 64 * block


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prepare_image(o: PrepareOptions) -> PrepareResult:
    token, gateway, node, settings, bundle, labels = _validate(o)
    if not o.image.is_file():
        raise BadInput(f"{o.image}: no such image file")
    if o.output.exists() and o.output.resolve() == o.image.resolve():
        raise BadInput("--output must differ from --image: the input is never modified")
    _parts, layout = read_layout(str(o.image))
    partial = o.output.with_name(o.output.name + ".partial")
    try:
        shutil.copyfile(o.image, partial)
        result = _bake(
            str(partial),
            layout,
            token,
            gateway,
            node,
            settings,
            bundle,
            mqtt_auth=o.mqtt_auth,
            labels=labels,
            mappers=o.mappers,
            release_key=read_release_key(o.release_key) if o.release_key else None,
        )
        os.replace(partial, o.output)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise FlashError(f"cannot write {o.output}: {exc}") from exc
    except BaseException:  # FlashError, or an interrupt: never leave half an image
        partial.unlink(missing_ok=True)
        raise
    return PrepareResult(o.output, layout, node, result)


def _bake(
    image: str,
    layout: PiLayout,
    token: JoinToken,
    gateway: str,
    node: str,
    settings: BootSettings,
    bundle: Bundle | None,
    *,
    mqtt_auth: bool = True,
    labels: dict[str, str] | None = None,
    mappers: tuple[str, ...] = (),
    release_key: bytes | None = None,
) -> tuple[WrittenFile, ...]:
    root = Ext4Volume(image, layout.root.offset)
    boot = FatVolume(image, layout.boot.offset)
    dirs, files, links = _root_files(
        token,
        gateway,
        node,
        bundle,
        components=_components(bundle, root, mappers),
        mqtt_auth=mqtt_auth,
        labels=labels,
        release_key=release_key,
    )
    free = root.free_bytes()
    need = _needed(files)
    if need > free:
        raise FilesystemFull(
            f"root filesystem has {free // 1024} KiB free, edgeflash needs {need // 1024} KiB: "
            "grow partition 2 of the image first"
        )
    written = [WrittenFile("root", f.path, len(f.data), _sha(f.data), f.mode) for f in files]
    for path, data in boot_files(settings).items():
        boot.write(path, data)
        written.append(WrittenFile("boot", path, len(data), _sha(data)))
    manifest = {
        "format": 1,
        "node": node,
        "gateway": gateway,
        "ca_pin": f"sha256:{token.pin}",
        "labels": labels or {},
        "release_key": release_key is not None,
        "bundle": None if bundle is None else {"arch": bundle.arch, "python": bundle.python},
        "files": [
            {"partition": w.partition, "path": w.path, "size": w.size, "sha256": w.sha256}
            for w in written
        ],
    }
    manifest_file = File(fb.MANIFEST_PATH, (json.dumps(manifest, indent=2) + "\n").encode())
    root.apply([*dirs, *files, *links, manifest_file])
    # Read everything back through the same tools: what is on the image is what we meant.
    for w in written:
        vol = root if w.partition == "root" else boot
        if _sha(vol.read(w.path)) != w.sha256:
            raise VerifyFailed(f"{w.partition}:{w.path} reads back different from what was written")
    return tuple(written)
