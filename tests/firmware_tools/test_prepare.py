"""``edgeflash prepare`` on Pi-like images, every written file read back through
mtools / debugfs, and bad input failing cleanly with the input untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
from firmware_tools import FilesystemFull, parse_gateway_url, parse_token
from firmware_tools._ext4 import Ext4Volume, File
from firmware_tools._fat import FatVolume
from firmware_tools._pios import wpa_psk

from .conftest import (
    BOOT_SECTORS,
    BOOT_START,
    MIB,
    ROOT_START,
    TOKEN,
    PiImage,
    assert_one_line_error,
    edgeflash,
    make_pi_image,
    sha256,
)

TREE = Path(__file__).resolve().parents[2]

SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx2aWQ7bQvk1uWcUu0XQHfBQ8yB6Qh6nT3sQh3l5H7M ops@fleet"
)


def _prepare(img: PiImage, out: Path, *extra: str | Path) -> subprocess.CompletedProcess[str]:
    return edgeflash(
        "prepare",
        "--image",
        img.path,
        "--output",
        out,
        "--gateway",
        "https://gw.example:7443",
        "--token",
        TOKEN,
        "--node",
        "pi-01",
        *extra,
    )


def test_prepare_writes_everything_and_reads_back(
    pi_image: PiImage, tmp_path: Path, project_bundle: Path
) -> None:
    key = tmp_path / "id.pub"
    key.write_text(SSH_KEY + "\n")
    before = sha256(pi_image.path)
    out = tmp_path / "out.img"
    proc = _prepare(
        pi_image,
        out,
        "--hostname",
        "greenhouse",
        "--ssh-key",
        key,
        "--wifi-ssid",
        "IEEE",
        "--wifi-psk",
        "password",
        "--wifi-country",
        "DE",
        "--bundle",
        project_bundle,
    )
    assert proc.returncode == 0, proc.stderr
    assert "prepared" in proc.stdout
    assert sha256(pi_image.path) == before  # input never modified
    assert not (tmp_path / "out.img.partial").exists()

    boot = FatVolume(str(out), pi_image.boot_offset)
    custom = tomllib.loads(boot.read("/custom.toml").decode())
    assert custom["config_version"] == 1
    assert custom["system"]["hostname"] == "greenhouse"
    assert custom["user"] == {"name": "pi", "password": "*", "password_encrypted": True}
    assert custom["ssh"]["enabled"] is True
    assert custom["ssh"]["authorized_keys"] == [SSH_KEY]
    assert custom["wlan"]["ssid"] == "IEEE"
    # IEEE 802.11i test vector for passphrase "password", SSID "IEEE".
    assert custom["wlan"]["password"] == (
        "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
    )
    assert custom["wlan"]["country"] == "DE"
    assert boot.read("/userconf.txt") == b"pi:*\n"
    assert boot.read("/ssh") == b""
    # The image's own files are still there, unchanged.
    assert b"init=/usr/lib/raspberrypi-sys-mods/firstboot" in boot.read("/cmdline.txt")
    assert {"cmdline.txt", "config.txt", "custom.toml", "userconf.txt", "ssh"} <= {
        n.lower() for n in boot.listdir()
    }

    root = Ext4Volume(str(out), pi_image.root_offset)
    conf = root.read("/etc/edgeflock/edgeflock.conf").decode()
    assert "GATEWAY=https://gw.example:7443" in conf
    assert f"CA_PIN=sha256:{TOKEN.split('.')[2]}" in conf
    assert "NODE=pi-01" in conf
    assert root.read("/etc/edgeflock/join.token").decode().strip() == TOKEN
    token_st = root.lstat("/etc/edgeflock/join.token")
    assert stat.S_IMODE(token_st.mode) == 0o600 and (token_st.uid, token_st.gid) == (0, 0)
    script = root.lstat("/usr/local/lib/edgeflock/firstboot.sh")
    assert stat.S_IMODE(script.mode) == 0o755 and stat.S_ISREG(script.mode)
    assert root.read("/usr/local/lib/edgeflock/firstboot.sh").startswith(b"#!/bin/sh\n")
    unit = root.read("/etc/systemd/system/edgeflock-firstboot.service").decode()
    assert "ExecStart=/usr/local/lib/edgeflock/firstboot.sh" in unit
    assert "ConditionPathExists=/etc/edgeflock/join.token" in unit
    agent = root.read("/etc/systemd/system/edgeflock-agent.service").decode()
    assert (
        "ExecStart=/opt/edgeflock/launcher/bin/edgeagent launch --data-dir /var/lib/edgeflock/agent"
        " --releases /opt/edgeflock --" in agent
    )
    assert "StartLimitIntervalSec=0" in agent and "Restart=always" in agent
    link = "/etc/systemd/system/multi-user.target.wants/edgeflock-firstboot.service"
    assert stat.S_ISLNK(root.lstat(link).mode)
    assert root.readlink(link) == "/etc/systemd/system/edgeflock-firstboot.service"
    assert stat.S_IMODE(root.lstat("/var/lib/edgeflock/agent").mode) == 0o700
    assert root.read("/etc/hostname") == b"raspberrypi\n"  # untouched; custom.toml renames
    for entry in json.loads((project_bundle / "manifest.json").read_text())["files"]:
        data = root.read(f"/opt/edgeflock/bundle/{entry['path']}")
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["size"]

    # Every file the manifest lists reads back with its hash; inspect agrees.
    manifest = json.loads(root.read("/etc/edgeflock/edgeflash-manifest.json"))
    assert len(manifest["files"]) >= 10
    for e in manifest["files"]:
        vol = root if e["partition"] == "root" else boot
        assert hashlib.sha256(vol.read(e["path"])).hexdigest() == e["sha256"], e["path"]
    report = json.loads(edgeflash("inspect", out, "-o", "json", check=True).stdout)
    assert report["prepared"] and report["node"] == "pi-01"
    assert [p["role"] for p in report["partitions"]] == ["boot", "root"]
    assert {f["status"] for f in report["files"]} == {"ok"}
    assert {f["path"] for f in report["files"]} == {e["path"] for e in manifest["files"]}
    text = edgeflash("inspect", out, check=True).stdout
    assert "root:/etc/edgeflock/join.token" in text and "ok" in text

    # Both filesystems are consistent by their own checkers.
    fsck = subprocess.run(
        ["e2fsck", "-fn", f"{out}?offset={pi_image.root_offset}"], capture_output=True, text=True
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    part = tmp_path / "boot.part"
    with open(out, "rb") as src, open(part, "wb") as dst:
        src.seek(BOOT_START * 512)
        dst.write(src.read(BOOT_SECTORS * 512))
    fat = subprocess.run(["fsck.fat", "-n", str(part)], capture_output=True, text=True)
    assert fat.returncode == 0, fat.stdout + fat.stderr


def test_inspect_flags_a_tampered_file(pi_image: PiImage, tmp_path: Path) -> None:
    out = tmp_path / "out.img"
    assert _prepare(pi_image, out).returncode == 0
    FatVolume(str(out), pi_image.boot_offset).write("/userconf.txt", b"pi:$6$evil\n")
    report = json.loads(edgeflash("inspect", out, "-o", "json", check=True).stdout)
    status = {f["path"]: f["status"] for f in report["files"]}
    assert status["/userconf.txt"] == "modified"
    assert status["/etc/edgeflock/join.token"] == "ok"
    assert "ssh" not in {Path(p).name for p in status}  # no key given: no ssh file
    plain = json.loads(edgeflash("inspect", pi_image.path, "-o", "json", check=True).stdout)
    assert plain["prepared"] is False and plain["files"] == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--token", "not-a-token"], "malformed join token"),
        (["--token", TOKEN.upper()], "malformed join token"),
        (["--token", TOKEN[:-1]], "malformed join token"),
        (["--gateway", "http://gw:7443"], "malformed gateway URL"),
        (["--gateway", "https://gw:99999"], "malformed gateway URL"),
        (["--gateway", "https://gw:7443/join?x=1"], "malformed gateway URL"),
        (["--gateway", "gw.example"], "malformed gateway URL"),
        (["--node", "Bad_Name"], "invalid node name"),
        (["--hostname", "bad_host"], "invalid hostname"),
        (["--wifi-ssid", "home"], "go together"),
        (["--wifi-ssid", "home", "--wifi-psk", "short"], "8-63"),
        (["--ssh-key", "/nonexistent/key.pub"], "cannot read SSH key"),
        (["--bundle", "/nonexistent"], "not a bundle"),
        (["--labels", "site=a b"], "--labels: invalid value 'a b' of label 'site'"),
        (["--labels", "kubernetes.io/role=x"], "a node may not set labels under kubernetes.io"),
    ],
)
def test_bad_input_is_one_line_and_leaves_input_alone(
    pi_image: PiImage, tmp_path: Path, args: list[str], needle: str
) -> None:
    before = sha256(pi_image.path)
    base = {"--gateway": "https://gw:7443", "--token": TOKEN, "--node": "pi-01"}
    flags = dict(base)
    rest = list(args)
    while rest and rest[0] in base:
        flags[rest[0]] = rest[1]
        rest = rest[2:]
    out = tmp_path / "out.img"
    argv = [a for kv in flags.items() for a in kv]
    proc = edgeflash("prepare", "--image", pi_image.path, "--output", out, *argv, *rest)
    assert_one_line_error(proc, needle)
    assert sha256(pi_image.path) == before
    assert not out.exists() and not (tmp_path / "out.img.partial").exists()


def test_labels_go_to_the_agents_config(pi_image: PiImage, tmp_path: Path) -> None:
    out = tmp_path / "o.img"
    proc = _prepare(pi_image, out, "--labels", "site=plant-2,example.com/tier=")
    assert proc.returncode == 0, proc.stderr
    root = Ext4Volume(str(out), pi_image.root_offset)
    toml = tomllib.loads(root.read("/var/lib/edgeflock/agent/agent.toml").decode())
    assert toml == {"labels": {"example.com/tier": "", "site": "plant-2"}}
    manifest = json.loads(root.read("/etc/edgeflock/edgeflash-manifest.json"))
    assert manifest["labels"] == {"example.com/tier": "", "site": "plant-2"}
    assert "/var/lib/edgeflock/agent/agent.toml" in {f["path"] for f in manifest["files"]}
    # Without labels there is no agent.toml: the agent's defaults apply.
    plain = tmp_path / "p.img"
    assert _prepare(pi_image, plain).returncode == 0
    assert not Ext4Volume(str(plain), pi_image.root_offset).exists(
        "/var/lib/edgeflock/agent/agent.toml"
    )


def test_release_key_goes_into_the_image(pi_image: PiImage, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "release.pub").write_bytes(public)
    out = tmp_path / "o.img"
    proc = _prepare(pi_image, out, "--release-key", tmp_path / "release.pub")
    assert proc.returncode == 0, proc.stderr
    root = Ext4Volume(str(out), pi_image.root_offset)
    assert root.read("/etc/edgeflock/release.pub") == public
    assert stat.S_IMODE(root.lstat("/etc/edgeflock/release.pub").mode) == 0o644
    assert json.loads(root.read("/etc/edgeflock/edgeflash-manifest.json"))["release_key"] is True
    # The private key, another kind of key, or no key at all: one line, no image.
    other = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for data, needle in (
        (private, "is a private key: pass the public key (release.pub)"),
        (other, "is not an Ed25519 public key in PEM"),
        (b"hello", "is not an Ed25519 public key in PEM"),
    ):
        (tmp_path / "k").write_bytes(data)
        proc = _prepare(pi_image, tmp_path / "x.img", "--release-key", tmp_path / "k")
        assert_one_line_error(proc, needle)
        assert not (tmp_path / "x.img").exists()
    proc = _prepare(pi_image, tmp_path / "x.img", "--release-key", tmp_path / "missing")
    assert_one_line_error(proc, "--release-key", "No such file")


def test_private_key_is_refused(pi_image: PiImage, tmp_path: Path) -> None:
    key = tmp_path / "id"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n-----END OPENSSH PRIVATE KEY-----\n")
    assert_one_line_error(_prepare(pi_image, tmp_path / "o.img", "--ssh-key", key), "private key")


def test_images_without_the_expected_partitions(tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * MIB)
    only_fat = make_pi_image(
        tmp_path / "fat.img", parts=f"label: dos\nstart={BOOT_START}, size={BOOT_SECTORS}, type=c\n"
    )
    unformatted = make_pi_image(
        tmp_path / "raw.img",
        parts=f"label: dos\nstart={BOOT_START}, size={BOOT_SECTORS}, type=c\nstart={ROOT_START}, type=83\n",
    )
    truncated = make_pi_image(tmp_path / "full.img")
    cut = tmp_path / "cut.img"
    cut.write_bytes(truncated.path.read_bytes()[: 50 * MIB])
    cases = [
        (blank, "no MBR partition table"),
        (only_fat.path, "no Linux root partition"),
        (unformatted.path, "holds no FAT filesystem"),
        (cut, "truncated"),
        (tmp_path / "missing.img", "no such image file"),
    ]
    for image, needle in cases:
        before = sha256(image) if image.exists() else None
        out = tmp_path / "out.img"
        proc = edgeflash(
            "prepare",
            "--image",
            image,
            "--output",
            out,
            "--gateway",
            "https://gw:7443",
            "--token",
            TOKEN,
            "--node",
            "pi-01",
        )
        assert_one_line_error(proc, needle)
        assert not out.exists()
        if before is not None:
            assert sha256(image) == before
        if image.exists():
            assert_one_line_error(edgeflash("inspect", image), needle)


def test_full_root_filesystem(tmp_path: Path, project_bundle: Path) -> None:
    img = make_pi_image(tmp_path / "full.img", filler=17 * MIB + 200 * 1024)
    before = sha256(img.path)
    out = tmp_path / "out.img"
    proc = _prepare(img, out, "--bundle", project_bundle)
    assert_one_line_error(proc, "root filesystem has", "KiB free")
    assert sha256(img.path) == before
    assert not out.exists() and not (tmp_path / "out.img.partial").exists()


def test_debugfs_running_out_of_space_is_reported(tmp_path: Path) -> None:
    """Past the up-front estimate, debugfs's own allocation failure becomes FilesystemFull."""
    img = make_pi_image(tmp_path / "full.img", filler=17 * MIB + 200 * 1024)
    vol = Ext4Volume(str(img.path), img.root_offset)
    free = vol.free_bytes()
    with pytest.raises(FilesystemFull, match="root partition is full"):
        vol.apply([File("/big.bin", b"\x01" * (free + 64 * 1024))])


def test_parsers() -> None:
    assert parse_gateway_url("https://GW.example:7443/") == "https://gw.example:7443"
    assert parse_gateway_url("https://[::1]:7443") == "https://[::1]:7443"
    assert parse_gateway_url("https://10.0.0.1") == "https://10.0.0.1"
    t = parse_token(TOKEN)
    assert (t.id, t.secret, len(t.pin), str(t)) == ("abcdef", "0123456789abcdef", 64, TOKEN)
    assert wpa_psk("x", "A" * 64) == "a" * 64


def test_bundle_with_mosquitto_and_containerd_gets_their_units(
    pi_image: PiImage, tmp_path: Path, project_bundle: Path
) -> None:
    b = tmp_path / "bundle"
    shutil.copytree(project_bundle, b)
    (b / "debs").mkdir()
    (b / "images").mkdir()
    extra = {
        "debs/mosquitto_2.0.11-1.2+deb12u1_arm64.deb": b"!<arch>\nmosquitto",
        "debs/containerd_1.6.20~ds1-1+b1_arm64.deb": b"!<arch>\ncontainerd",
        "images/pause.tar": b"oci-layout",
    }
    manifest = json.loads((b / "manifest.json").read_text())
    for rel, data in extra.items():
        (b / rel).write_bytes(data)
        manifest["files"].append(
            {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
    (b / "manifest.json").write_text(json.dumps(manifest))
    (b / "SHA256SUMS").write_text(
        "".join(f"{f['sha256']}  {f['path']}\n" for f in manifest["files"])
    )
    out = tmp_path / "out.img"
    proc = _prepare(pi_image, out, "--bundle", b)
    assert proc.returncode == 0, proc.stderr
    root = Ext4Volume(str(out), pi_image.root_offset)
    agent = root.read("/etc/systemd/system/edgeflock-agent.service").decode()
    assert "--mqtt tcp://127.0.0.1:1883" in agent
    assert "--cri unix:///run/edgeflock/containerd/containerd.sock" in agent
    assert (
        "After=network-online.target edgeflock-mosquitto.service edgeflock-containerd.service"
        in agent
    )
    assert (
        "ExecStart=/usr/sbin/mosquitto -c /etc/edgeflock/mosquitto.conf"
        in root.read("/etc/systemd/system/edgeflock-mosquitto.service").decode()
    )
    assert b"listener 1883 127.0.0.1" in root.read("/etc/edgeflock/mosquitto.conf")
    # Local MQTT needs the agent's logins by default (issue 11, defect 19).
    assert b"allow_anonymous false" in root.read("/etc/edgeflock/mosquitto.conf")
    assert "--mqtt-auth --mqtt-auth-dir /var/lib/edgeflock/mqtt" in agent
    assert tomllib.loads(root.read("/etc/edgeflock/containerd.toml").decode())["grpc"][
        "address"
    ] == ("/run/edgeflock/containerd/containerd.sock")
    conf = root.read("/etc/edgeflock/edgeflock.conf").decode()
    assert (
        "UNITS='edgeflock-mosquitto.service edgeflock-containerd.service edgeflock-agent.service'"
        in conf
    )
    assert "DISTRO_UNITS='mosquitto.service containerd.service'" in conf
    for rel, data in extra.items():
        assert root.read(f"/opt/edgeflock/bundle/{rel}") == data
    # The first-boot script is valid POSIX sh.
    script = tmp_path / "firstboot.sh"
    script.write_bytes(root.read("/usr/local/lib/edgeflock/firstboot.sh"))
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0


def test_unclean_root_filesystem_is_refused(pi_image: PiImage, tmp_path: Path) -> None:
    """An image dumped from a running board (journal not replayed) is not written into."""
    subprocess.run(
        [
            "debugfs",
            "-w",
            "-R",
            "feature needs_recovery",
            f"{pi_image.path}?offset={pi_image.root_offset}",
        ],
        check=True,
        capture_output=True,
    )
    before = sha256(pi_image.path)
    proc = _prepare(pi_image, tmp_path / "out.img")
    assert_one_line_error(proc, "journal needs recovery", "e2fsck")
    assert sha256(pi_image.path) == before and not (tmp_path / "out.img").exists()


def test_image_with_debians_containerd_and_mosquitto_a_mapper_and_a_sandbox_image(
    pi_image: PiImage, tmp_path: Path
) -> None:
    """Raspberry Pi OS with Debian's containerd, runc and mosquitto already installed (as
    the emulated board's image has them): their edgeflock units without carrying .debs;
    a mapper unit; containerd told the bundle's pause image and given a CNI bridge."""
    from firmware_tools._ext4 import Dir

    Ext4Volume(str(pi_image.path), pi_image.root_offset).apply(
        [Dir("/usr", 0o755), Dir("/usr/bin", 0o755), Dir("/usr/sbin", 0o755)]
        + [File(p, b"\x7fELF", 0o755) for p in
           ("/usr/bin/containerd", "/usr/sbin/runc", "/usr/sbin/mosquitto")]
    )  # fmt: skip
    images = tmp_path / "images"
    subprocess.run(
        ["bash", str(TREE / "scripts/containerd"), "build-images", str(images)], check=True
    )
    bundle = tmp_path / "bundle"
    edgeflash(
        "bundle", "--arch", "x86_64", "--python", "3.11", "--no-deps", "--output", bundle,
        "--sandbox-image", images / "pause.tar", check=True,
    )  # fmt: skip
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["sandbox_image"] == "localhost/edgeflock/pause:1"
    assert any(f["path"] == "images/pause.tar" for f in manifest["files"])
    out = tmp_path / "out.img"
    proc = _prepare(pi_image, out, "--bundle", bundle, "--mapper", "modbus")
    assert proc.returncode == 0, proc.stderr
    root = Ext4Volume(str(out), pi_image.root_offset)
    conf = root.read("/etc/edgeflock/edgeflock.conf").decode()
    assert (
        "UNITS='edgeflock-mosquitto.service edgeflock-containerd.service "
        "edgeflock-agent.service edgeflock-mapper-modbus.service'" in conf
    )
    mapper = root.read("/etc/systemd/system/edgeflock-mapper-modbus.service").decode()
    assert "/opt/edgeflock/current/bin/modbus-mapper --mqtt tcp://127.0.0.1:1883 --node" in mapper
    assert "--mqtt-credentials /var/lib/edgeflock/mqtt/mapper-modbus.cred" in mapper
    containerd = tomllib.loads(root.read("/etc/edgeflock/containerd.toml").decode())
    cri = containerd["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "localhost/edgeflock/pause:1"
    assert cri["cni"]["conf_dir"] == "/etc/edgeflock/cni"
    cni = json.loads(root.read("/etc/edgeflock/cni/10-edgeflock.conflist"))
    assert cni["plugins"][0]["type"] == "bridge"
    assert cni["plugins"][0]["ipam"]["dataDir"].startswith("/run/")
    unit = root.read("/etc/systemd/system/edgeflock-containerd.service").decode()
    assert "rm -rf /var/lib/cni/results" in unit  # stale after every reboot

    # A mapper without a broker to talk to, or of an unknown protocol: refused.
    bare = make_pi_image(tmp_path / "bare.img")
    proc = _prepare(bare, tmp_path / "x.img", "--bundle", bundle, "--mapper", "modbus")
    assert proc.returncode == 1 and "--mapper needs mosquitto" in proc.stderr
    assert not (tmp_path / "x.img").exists()
    proc = _prepare(bare, tmp_path / "x.img", "--bundle", bundle, "--mapper", "zigbee")
    assert proc.returncode == 2 and "zigbee" in proc.stderr


def test_sandbox_image_must_be_an_oci_archive(tmp_path: Path) -> None:
    bad = tmp_path / "pause.tar"
    bad.write_bytes(b"not a tar")
    proc = edgeflash(
        "bundle", "--arch", "aarch64", "--no-deps", "--output", tmp_path / "b",
        "--sandbox-image", bad,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "not an OCI image archive" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "b").exists()
