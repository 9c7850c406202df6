"""``edgeflash``: prepare, bundle, write, inspect. Errors are one line and exit 1."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ._errors import FlashError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgeflash", description="bake and flash agent-ready Raspberry Pi OS images"
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    pr = sub.add_parser("prepare", help="copy an image and bake the agent into it")
    pr.add_argument("--image", required=True, type=Path, help="Raspberry Pi OS .img (not changed)")
    pr.add_argument("--output", required=True, type=Path, help="prepared image to create")
    pr.add_argument("--gateway", required=True, help="join endpoint, https://HOST:PORT")
    pr.add_argument("--token", required=True, help="from 'cloudgateway token create'")
    pr.add_argument("--node", help="node name the token was created for")
    pr.add_argument("--hostname", help="board hostname (default: the node name)")
    pr.add_argument("--user", default="pi", help="login user (default pi)")
    pr.add_argument("--password-hash", help="crypt(3) hash for the user (openssl passwd -6)")
    pr.add_argument("--ssh-key", type=Path, help="OpenSSH public key file to authorize")
    pr.add_argument("--wifi-ssid")
    pr.add_argument("--wifi-psk")
    pr.add_argument("--wifi-country", default="GB", help="regulatory domain (default GB)")
    pr.add_argument("--bundle", type=Path, help="directory made by 'edgeflash bundle'")
    pr.add_argument(
        "--labels",
        default="",
        metavar="K=V,...",
        help="Node labels the board asks for when it joins, e.g. site=plant-2,sensor=modbus",
    )
    pr.add_argument(
        "--mapper",
        action="append",
        choices=("modbus", "serial"),
        default=[],
        help="run this mapper as a service beside the agent (repeatable)",
    )
    pr.add_argument(
        "--release-key",
        type=Path,
        help="the fleet's release public key (release.pub): the board installs only "
        "agent upgrades signed with its private key",
    )
    pr.add_argument(
        "--mqtt-anonymous",
        dest="mqtt_auth",
        action="store_false",
        help="local MQTT open to any local process (default: per-client logins and ACLs)",
    )

    b = sub.add_parser("bundle", help="build the offline wheelhouse for the board")
    b.add_argument("--arch", required=True, choices=("aarch64", "armv7l", "x86_64"))
    b.add_argument("--python", default="3.11", help="the board's Python (Bookworm: 3.11)")
    b.add_argument("--output", required=True, type=Path)
    b.add_argument(
        "--project",
        "--source",
        dest="project",
        type=Path,
        help="edgeflock source tree to bundle (default: the installed one)",
    )
    b.add_argument("--no-deps", action="store_true", help="only the project's own wheel")
    b.add_argument("--deb", action="append", type=Path, default=[], help=".deb to carry")
    b.add_argument("--oci-image", action="append", type=Path, default=[], help="OCI archive")
    b.add_argument(
        "--sandbox-image",
        type=Path,
        help="OCI archive of the pause image: carried, and made containerd's sandbox image",
    )
    b.add_argument("--extra-index-url", help="e.g. https://www.piwheels.org/simple")
    b.add_argument(
        "--find-links",
        action="append",
        type=Path,
        default=[],
        help="directory of wheels for the target (those PyPI lacks, e.g. for armv7l)",
    )

    w = sub.add_parser("write", help="write an image to a card and verify it")
    w.add_argument("--image", required=True, type=Path)
    w.add_argument("--device", required=True, type=Path, help="/dev/sdX (whole disk) or a file")
    w.add_argument("--yes", action="store_true", help="do not ask before erasing the device")
    w.add_argument("--force", action="store_true", help="allow mounted / non-removable disks")
    w.add_argument("--block-size", type=int, default=4, help="MiB per write (default 4)")
    w.add_argument("--no-verify", action="store_true")
    w.add_argument("--progress", action="store_true", help="progress bar even when not a tty")

    i = sub.add_parser("inspect", help="show partitions and what edgeflash put there")
    i.add_argument("image", type=Path)
    i.add_argument("-o", "--output", choices=("text", "json"), default="text")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "prepare":
            return _prepare(args)
        if args.cmd == "bundle":
            return _bundle(args)
        if args.cmd == "write":
            return _write(args)
        return _inspect(args)
    except FlashError as exc:
        print(f"edgeflash: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `edgeflash inspect IMG | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("edgeflash: interrupted", file=sys.stderr)
        return 130


def _prepare(args: argparse.Namespace) -> int:
    from ._prepare import PrepareOptions, prepare_image

    result = prepare_image(
        PrepareOptions(
            image=args.image,
            output=args.output,
            gateway=args.gateway,
            token=args.token,
            node=args.node,
            hostname=args.hostname,
            user=args.user,
            password_hash=args.password_hash,
            ssh_key=args.ssh_key,
            wifi_ssid=args.wifi_ssid,
            wifi_psk=args.wifi_psk,
            wifi_country=args.wifi_country,
            bundle=args.bundle,
            mqtt_auth=args.mqtt_auth,
            labels=args.labels,
            mappers=tuple(dict.fromkeys(args.mapper)),
            release_key=args.release_key,
        )
    )
    size = sum(f.size for f in result.files)
    print(
        f"prepared {result.output} for node {result.node}: {len(result.files)} files, "
        f"{size / (1 << 20):.1f} MiB (boot p{result.layout.boot.number}, "
        f"root p{result.layout.root.number})"
    )
    print(f"next: edgeflash write --image {result.output} --device /dev/sdX")
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from ._bundle import build_bundle

    bundle = build_bundle(
        arch=args.arch,
        python=args.python,
        output=args.output,
        project=args.project,
        no_deps=args.no_deps,
        debs=tuple(args.deb),
        images=tuple(args.oci_image),
        extra_index_url=args.extra_index_url,
        find_links=tuple(args.find_links),
        sandbox_image=args.sandbox_image,
    )
    print(
        f"bundle {bundle.root}: edgeflock {bundle.project_version} for {bundle.arch} / "
        f"Python {bundle.python}, {len(bundle.files)} files, "
        f"{bundle.total_size / (1 << 20):.1f} MiB"
    )
    return 0


def _write(args: argparse.Namespace) -> int:
    from ._errors import UnsafeTarget
    from ._write import check_target, format_progress, write_image

    target = check_target(args.device, force=args.force)
    if target.kind == "block" and not args.yes:
        size = f"{target.size / 1e9:.1f} GB" if target.size else "unknown size"
        if not sys.stdin.isatty():
            raise UnsafeTarget(f"{args.device} ({size}) would be erased: pass --yes to confirm")
        answer = input(f"Erase {args.device} ({size}) and write {args.image}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing written")
            return 1
    show = args.progress or sys.stderr.isatty()

    def progress(done: int, total: int, elapsed: float) -> None:
        print("\r" + format_progress(done, total, elapsed), end="", file=sys.stderr, flush=True)

    result = write_image(
        args.image,
        target,
        block_size=args.block_size << 20,
        verify=not args.no_verify,
        progress=progress if show else None,
    )
    if show:
        print(file=sys.stderr)
    mib = 1 << 20
    print(
        f"wrote {result.bytes / mib:.1f} MiB to {args.device} in {result.write_seconds:.2f} s "
        f"({result.write_rate / mib:.1f} MiB/s, synced)"
    )
    if result.sha256:
        print(f"verified: sha256 {result.sha256} ({result.verify_seconds:.2f} s)")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from ._inspect import inspect_image, render_text

    report = inspect_image(args.image)
    print(json.dumps(report, indent=2) if args.output == "json" else render_text(report))
    return 0
