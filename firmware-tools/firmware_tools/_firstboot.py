"""What goes onto the root filesystem for the first boot: script, units, config.

Everything here is text built from values; nothing touches an image.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

__all__ = [
    "AGENT_UNIT",
    "BUNDLE_DIR",
    "CONF_PATH",
    "DATA_DIR",
    "FIRSTBOOT_SCRIPT",
    "FIRSTBOOT_UNIT",
    "MANIFEST_PATH",
    "RELEASES_DIR",
    "RELEASE_KEY_PATH",
    "SERVICE_ENVIRONMENT",
    "TOKEN_PATH",
    "UNIT_DIR",
    "Components",
    "agent_toml",
    "agent_unit",
    "cni_config",
    "conf_file",
    "containerd_config",
    "containerd_unit",
    "firstboot_script",
    "firstboot_unit",
    "mapper_unit",
    "mapper_unit_name",
    "mosquitto_config",
    "mosquitto_unit",
]

BUNDLE_DIR = "/opt/edgeflock/bundle"
# The releases root: releases/<version>/ (a venv each), current, previous, and
# launcher (the release first boot installed, whose `edgeagent launch` the unit runs).
RELEASES_DIR = "/opt/edgeflock"
LAUNCHER_DIR = f"{RELEASES_DIR}/launcher"
CURRENT_DIR = f"{RELEASES_DIR}/current"
DATA_DIR = "/var/lib/edgeflock/agent"
# The fleet's release public key (edgeflash prepare --release-key), given to the join.
RELEASE_KEY_PATH = "/etc/edgeflock/release.pub"
CONF_PATH = "/etc/edgeflock/edgeflock.conf"
TOKEN_PATH = "/etc/edgeflock/join.token"
MANIFEST_PATH = "/etc/edgeflock/edgeflash-manifest.json"
FIRSTBOOT_SCRIPT = "/usr/local/lib/edgeflock/firstboot.sh"
UNIT_DIR = "/etc/systemd/system"
FIRSTBOOT_UNIT = "edgeflock-firstboot.service"
AGENT_UNIT = "edgeflock-agent.service"
MOSQUITTO_UNIT = "edgeflock-mosquitto.service"
CONTAINERD_UNIT = "edgeflock-containerd.service"
MQTT_URL = "tcp://127.0.0.1:1883"
# The agent writes mosquitto's password and ACL files here (mqtt_auth); mosquitto
# reads them as user mosquitto: the directory is setgid mosquitto, so the files
# the agent writes get that group, and mosquitto writes its PID file there.
MQTT_AUTH_DIR = "/var/lib/edgeflock/mqtt"
CRI_SOCKET = "/run/edgeflock/containerd/containerd.sock"
# The Python services (agent, mappers) run without docstrings and assert
# statements (PYTHONOPTIMIZE=2, as ``python -OO``) and without the column tables
# of tracebacks (PYTHONNODEBUGRANGES=1, as ``-X no_debug_ranges``): their code
# objects are what most of their memory is, and these leave ~1.8 MiB of the
# agent's 38 unused (BENCHMARKS.md). The first boot writes the venv's opt-2
# bytecode when it installs it; the standard library's is written on first start.
SERVICE_ENVIRONMENT = {"PYTHONOPTIMIZE": "2", "PYTHONNODEBUGRANGES": "1"}


def _environment_lines() -> str:
    return "".join(f"Environment={k}={v}\n" for k, v in SERVICE_ENVIRONMENT.items())


@dataclass(frozen=True, slots=True)
class Components:
    """Which services the bundle carries besides the agent."""

    mosquitto: bool = False
    containerd: bool = False
    # Mapper protocols ("modbus", "serial") to run as services beside the agent.
    mappers: tuple[str, ...] = ()

    def distro_units(self) -> list[str]:
        return [
            unit
            for unit, carried in (
                ("mosquitto.service", self.mosquitto),
                ("containerd.service", self.containerd),
            )
            if carried
        ]

    def units(self) -> list[str]:
        extra = [MOSQUITTO_UNIT] if self.mosquitto else []
        extra += [CONTAINERD_UNIT] if self.containerd else []
        return [*extra, AGENT_UNIT, *(mapper_unit_name(p) for p in self.mappers)]


def conf_file(*, gateway: str, ca_pin: str, node: str, components: Components) -> str:
    values = {
        "GATEWAY": gateway,
        "CA_PIN": ca_pin,
        "NODE": node,
        "DATA_DIR": DATA_DIR,
        "BUNDLE": BUNDLE_DIR,
        "RELEASES": RELEASES_DIR,
        "UNITS": " ".join(components.units()),
        "CONTAINERD_SOCKET": CRI_SOCKET if components.containerd else "",
        # The distribution's own units for what edgeflock runs itself (port 1883...).
        "DISTRO_UNITS": " ".join(components.distro_units()),
    }
    lines = [
        "# edgeflock board configuration, written by edgeflash prepare.",
        "# Shell syntax: read by the first-boot script.",
    ]
    lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def agent_toml(labels: dict[str, str]) -> str:
    """The agent's ``agent.toml`` with the Node ``labels`` its first-boot join
    asks for (keys and values checked already: no quoting beyond JSON's)."""
    import json

    pairs = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in sorted(labels.items()))
    return (
        "# edgeagent configuration, written by edgeflash prepare.\n"
        "# labels: asked for when the board joins; afterwards the cloud's (edgectl label node).\n"
        f"labels = {{{pairs}}}\n"
    )


def agent_unit(components: Components, *, mqtt_auth: bool = True) -> str:
    """The agent's unit: ``edgeagent launch`` of the launcher release, which
    execs ``current``'s agent with the run arguments after ``--`` (or, while a
    new release is on trial, supervises it and switches back)."""
    launch = [f"{LAUNCHER_DIR}/bin/edgeagent", "launch", "--data-dir", DATA_DIR]
    launch += ["--releases", RELEASES_DIR, "--"]
    args: list[str] = []
    after = ["network-online.target"]
    if components.mosquitto:
        args += ["--mqtt", MQTT_URL]
        if mqtt_auth:
            args += ["--mqtt-auth", "--mqtt-auth-dir", MQTT_AUTH_DIR]
        after.append(MOSQUITTO_UNIT)
    if components.containerd:
        args += ["--cri", f"unix://{CRI_SOCKET}"]
        after.append(CONTAINERD_UNIT)
    return f"""\
[Unit]
Description=edgeflock edge agent
Documentation=https://github.com/edgeflock/edgeflock
Wants=network-online.target
After={" ".join(after)}
ConditionPathExists={DATA_DIR}/enrollment.json
# Never give up restarting: the launcher counts a new release's failed starts
# and switches back to the previous one itself.
StartLimitIntervalSec=0

[Service]
{_environment_lines()}ExecStart={" ".join(launch + args)}
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


MAPPERS = ("modbus", "serial")


def mapper_unit_name(protocol: str) -> str:
    return f"edgeflock-mapper-{protocol}.service"


def mapper_unit(protocol: str, node: str, *, mqtt_auth: bool = True) -> str:
    """A mapper beside the agent: it learns its devices from the agent over the local
    broker (membership), logging in with the credentials the agent writes for it."""
    args = [f"{CURRENT_DIR}/bin/{protocol}-mapper", "--mqtt", MQTT_URL, "--node", node]
    if mqtt_auth:
        args += ["--mqtt-credentials", f"{MQTT_AUTH_DIR}/mapper-{protocol}.cred"]
    return f"""\
[Unit]
Description=edgeflock {protocol} mapper
After={MOSQUITTO_UNIT} {AGENT_UNIT}
Wants={MOSQUITTO_UNIT}

[Service]
{_environment_lines()}ExecStart={" ".join(args)}
# Until the agent has written its login, the mapper exits 2: try again.
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


def firstboot_unit() -> str:
    return f"""\
[Unit]
Description=edgeflock first boot: install the agent bundle and join the gateway
Wants=network-online.target
After=network-online.target time-sync.target
ConditionPathExists={TOKEN_PATH}

[Service]
Type=oneshot
ExecStart={FIRSTBOOT_SCRIPT}
# The script retries the join itself, with back-off, for as long as it takes.
TimeoutStartSec=infinity
# Anything else (no clock yet, a crash): try again rather than give up.
Restart=on-failure
RestartSec=30
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""


def mosquitto_config(*, mqtt_auth: bool = True) -> str:
    if mqtt_auth:
        access = f"""\
# Clients log in with what the agent wrote: mappers may publish only their own
# devices' twin topics; nobody else writes cloud Events or desired values.
allow_anonymous false
password_file {MQTT_AUTH_DIR}/passwd
acl_file {MQTT_AUTH_DIR}/acl
pid_file {MQTT_AUTH_DIR}/mosquitto.pid
"""
    else:
        access = "allow_anonymous true\n"
    return f"""\
# edgeflock edge bus: local clients only.
listener 1883 127.0.0.1
{access}persistence true
persistence_location /var/lib/edgeflock/mosquitto/
max_queued_messages 10000
"""


def mosquitto_unit(*, mqtt_auth: bool = True) -> str:
    # Until the agent has written them, the files are empty and nobody gets in;
    # the agent then makes mosquitto reload them (SIGHUP to the PID file).
    auth = (
        f"ExecStartPre=/bin/sh -c 'install -d -m 2770 -g mosquitto {MQTT_AUTH_DIR} && "
        f"cd {MQTT_AUTH_DIR} && touch passwd acl && chgrp mosquitto passwd acl && "
        "chmod 0640 passwd acl'\n"
        "ExecReload=/bin/kill -HUP $MAINPID\n"
        if mqtt_auth
        else ""
    )
    return f"""\
[Unit]
Description=edgeflock edge bus (mosquitto)
After=network.target

[Service]
ExecStartPre=/bin/mkdir -p /var/lib/edgeflock/mosquitto
{auth}ExecStart=/usr/sbin/mosquitto -c /etc/edgeflock/mosquitto.conf
Restart=always

[Install]
WantedBy=multi-user.target
"""


CNI_CONF_DIR = "/etc/edgeflock/cni"
# Debian's containernetworking-plugins (Raspberry Pi OS installs them there too).
CNI_BIN_DIR = "/usr/lib/cni"


def containerd_config(sandbox_image: str | None = None) -> str:
    """The board's containerd: its own root, state and socket; CRI with the CNI bridge
    below and, when the bundle carries one, its sandbox image (a board offline at
    first boot cannot pull registry.k8s.io/pause)."""
    sandbox = f'  sandbox_image = "{sandbox_image}"\n' if sandbox_image else ""
    return f"""\
version = 2
root = "/var/lib/edgeflock/containerd"
state = "/run/edgeflock/containerd"

[grpc]
  address = "{CRI_SOCKET}"

[plugins."io.containerd.grpc.v1.cri"]
{sandbox}  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{CNI_CONF_DIR}"
    max_conf_num = 1
"""


def cni_config() -> str:
    """Pods' network: a bridge with host-local addresses. No masquerade and no port
    mapping (both need iptables, which Raspberry Pi OS Lite does not carry): pods
    reach the board and each other; hostNetwork pods reach beyond. Address leases live
    in /run: every pod network is gone after a reboot, and so are they."""
    return """\
{
  "cniVersion": "0.4.0",
  "name": "edgeflock",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "edgeflock0",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "/run/edgeflock/cni-ipam",
        "ranges": [[{"subnet": "10.88.0.0/16"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "loopback"}
  ]
}
"""


def containerd_unit() -> str:
    # After a reboot every pod network is gone, but CNI's result cache in /var/lib/cni
    # is not: a power cut can leave a cached result truncated, and then tearing the
    # dead sandbox down fails for ever ("unexpected end of JSON input"; seen on the
    # emulated board). So the cache is cleared once per boot (the marker lives in /run).
    return """\
[Unit]
Description=edgeflock container runtime (containerd)
After=network.target local-fs.target

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStartPre=/bin/sh -c '[ -e /run/edgeflock/cni-cache-cleared ] || { rm -rf \
/var/lib/cni/results && mkdir -p /run/edgeflock && touch /run/edgeflock/cni-cache-cleared; }'
ExecStart=/usr/bin/containerd --config /etc/edgeflock/containerd.toml
Delegate=yes
KillMode=process
Restart=always

[Install]
WantedBy=multi-user.target
"""


def firstboot_script() -> str:
    return r"""#!/bin/sh
# edgeflock first boot, written by edgeflash prepare.
# Installs the offline bundle, joins the gateway, enables the agent, removes the token.
# Every step can be cut by a power loss and is redone on the next boot: the release
# counts as installed only once its marker is written (the agent's own install code,
# run from the bundle's wheel, as upgrades install releases), dpkg finishes what it had
# begun, the join is retried.
# Every path is taken relative to $EDGEFLOCK_ROOT (empty on a board), so the script
# can be run against an extracted root filesystem.
set -eu

ROOT="${EDGEFLOCK_ROOT:-}"
PYTHON="${EDGEFLOCK_PYTHON:-python3}"
. "$ROOT/etc/edgeflock/edgeflock.conf"
TOKEN_FILE="$ROOT/etc/edgeflock/join.token"
# A fresh token dropped onto the boot partition (FAT: any computer can write it)
# replaces an expired one without reflashing.
FRESH_TOKEN="$ROOT${EDGEFLOCK_BOOT:-/boot/firmware}/edgeflock-join.token"
B="$ROOT$BUNDLE"
R="$ROOT$RELEASES"
D="$ROOT$DATA_DIR"
KEY="$ROOT/etc/edgeflock/release.pub"
# Join retries: unbounded on a board (0), back-off doubling from RETRY_MIN to RETRY_MAX.
ATTEMPTS="${EDGEFLOCK_JOIN_ATTEMPTS:-0}"
RETRY_MIN="${EDGEFLOCK_JOIN_RETRY_MIN:-5}"
RETRY_MAX="${EDGEFLOCK_JOIN_RETRY_MAX:-300}"

log() { echo "edgeflock-firstboot: $*" >&2; }
fail() { log "error: $*"; exit 1; }
systemctl_() {
    if [ -n "$ROOT" ]; then systemctl --root="$ROOT" "$@"; else systemctl "$@"; fi
}
pin_ok() {
    case "$1" in
        *."${CA_PIN#sha256:}") return 0 ;;
        *) return 1 ;;
    esac
}
take_fresh_token() {
    [ -s "$FRESH_TOKEN" ] || return 0
    fresh=$(tr -d ' \r\n' < "$FRESH_TOKEN")
    if ! pin_ok "$fresh"; then
        log "ignoring $FRESH_TOKEN: it does not carry the CA pin $CA_PIN from edgeflock.conf"
        return 0
    fi
    (umask 077 && printf '%s\n' "$fresh" > "$TOKEN_FILE.new")
    mv "$TOKEN_FILE.new" "$TOKEN_FILE"
    rm -f "$FRESH_TOKEN"
    log "took the fresh join token from $FRESH_TOKEN"
}

take_fresh_token
[ -r "$TOKEN_FILE" ] || fail "no join token at $TOKEN_FILE"
TOKEN=$(cat "$TOKEN_FILE")
pin_ok "$TOKEN" || fail "join token does not carry the CA pin $CA_PIN from edgeflock.conf"

if [ -f "$B/SHA256SUMS" ]; then
    log "checking the bundle"
    (cd "$B" && sha256sum --quiet -c SHA256SUMS) || fail "bundle in $B is corrupt"
    if ls "$B"/debs/*.deb >/dev/null 2>&1; then
        log "installing Debian packages"
        if [ -n "$ROOT" ]; then
            dpkg --root="$ROOT" --configure -a
            dpkg --root="$ROOT" -i "$B"/debs/*.deb
        else
            dpkg --configure -a
            dpkg -i "$B"/debs/*.deb
        fi
        if [ -n "$DISTRO_UNITS" ]; then
            systemctl_ disable $DISTRO_UNITS 2>/dev/null || true
            [ -n "$ROOT" ] || systemctl stop $DISTRO_UNITS 2>/dev/null || true
        fi
    fi
    if [ ! -f "$R/launcher/.edgeflock-installed" ]; then
        wheel=$(ls "$B"/wheels/edgeflock-*.whl 2>/dev/null | head -n 1)
        [ -n "$wheel" ] || fail "no edgeflock wheel in $B/wheels"
        log "installing the agent into $RELEASES/releases"
        # edgeagent._slots (standard library only) imported from the wheel itself
        install='import sys; sys.path.insert(0, sys.argv[1])
from edgeagent._slots import main
sys.exit(main(sys.argv[2:]))'
        version=$("$PYTHON" -c "$install" "$wheel" \
            install --first --releases "$R" --data-dir "$D" "$B") \
            || fail "could not install the bundle"
        log "installed edgeflock $version; $RELEASES/current and launcher point at it"
        # The services run with PYTHONOPTIMIZE=2 (their units); the install wrote the
        # release's -OO bytecode, and here the standard library's (Debian ships only the
        # plain .pyc): a service that compiles its imports at start keeps ~2 MiB more.
        # Not fatal (a module left out is compiled when first imported); not against an
        # extracted root (its standard library is the host's).
        if [ -z "$ROOT" ]; then
            stdlib=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
            skip='/(test|idlelib|tkinter|lib2to3|ensurepip|turtledemo|distutils|pydoc_data)/'
            "$PYTHON" -OO -m compileall -q -j 0 -x "$skip" "$stdlib" >/dev/null \
                || log "some standard modules could not be compiled ahead (-OO)"
            sync
        fi
    fi
fi
EDGEAGENT="$R/launcher/bin/edgeagent"
[ -x "$EDGEAGENT" ] || EDGEAGENT=$(command -v edgeagent) || fail "edgeagent not installed"

if [ -n "$CONTAINERD_SOCKET" ] && ls "$B"/images/*.tar >/dev/null 2>&1; then
    systemctl_ start "edgeflock-containerd.service" || true
    waited=0
    while [ ! -S "$ROOT$CONTAINERD_SOCKET" ] && [ "$waited" -lt 120 ]; do
        sleep 1
        waited=$((waited + 1))
    done
    for image in "$B"/images/*.tar; do
        "$EDGEAGENT" images import "$image" --cri "unix://$ROOT$CONTAINERD_SOCKET" \
            || log "could not import $image"
    done
    sync  # the unpacked layers are on the card before anything else happens
fi

# The fleet's release key, if the image carries one: the agent trusts releases it signed.
if [ -f "$KEY" ]; then set -- --release-key "$KEY"; else set --; fi
attempt=0
delay="$RETRY_MIN"
while [ ! -f "$D/enrollment.json" ]; do
    log "joining $GATEWAY as $NODE"
    if "$EDGEAGENT" join --gateway "$GATEWAY" --token "$TOKEN" --data-dir "$D" "$@"; then
        break
    fi
    attempt=$((attempt + 1))
    if [ "$ATTEMPTS" -gt 0 ] && [ "$attempt" -ge "$ATTEMPTS" ]; then
        fail "join failed; the token is kept for the next try"
    fi
    log "join failed (attempt $attempt); next try in $delay s." \
        "If the token has expired, write a fresh one to $FRESH_TOKEN on the boot partition."
    sleep "$delay"
    delay=$((delay * 2))
    [ "$delay" -le "$RETRY_MAX" ] || delay="$RETRY_MAX"
    take_fresh_token
    TOKEN=$(cat "$TOKEN_FILE")
done
rm -f "$TOKEN_FILE"
log "joined; enabling $UNITS"
systemctl_ enable $UNITS
systemctl_ disable edgeflock-firstboot.service
if [ -z "$ROOT" ]; then
    systemctl start --no-block $UNITS
fi
log "done"
"""
