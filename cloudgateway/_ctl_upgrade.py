"""``edgectl upgrade ...``: agent upgrades over the air.

- ``keygen --out release.key``: the fleet's Ed25519 release key (PKCS8 PEM,
  0600) and its public half beside it (``release.pub``); the private key
  stays with whoever signs releases, never on the gateway.
- ``push DIR --key release.key``: packs an ``edgeflash bundle`` directory into
  one deterministic tar (sorted members, mtime 0, uid/gid 0) in a temporary
  file, signs its manifest (version and arch from ``DIR/manifest.json``, size,
  sha256, a sha256 per ``CHUNK_SIZE`` piece) and uploads what the gateway does
  not have yet, one piece at a time: pushing again resumes.
- ``start --version V (--nodes A,B | -l SELECTOR) ...``: a NodeUpgradeJob.
- ``status [JOB]``, ``abort [JOB]`` (JOB: the most recent job by default),
  ``releases``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import IO, Any

from edgeproto.upgrade import (
    ARCH_OF_NODE,
    CHUNK_SIZE,
    ReleaseManifest,
    UpgradeError,
    check_version,
    encode_manifest,
    sign_manifest,
)

from .ctl import CtlError, _Ctx, _print_table, server_error

__all__ = ["label_selector", "pack_bundle", "register"]

JOBS = "/apis/operations.kubeedge.io/v1alpha1/nodeupgradejobs"
RELEASES = "/apis/edgeflock.io/v1alpha1/releases"
_KUBELET = "-edgeflock."
_STATE_WORDS = {"rolledBack": "rolled back"}
_PIECE_TRIES = 5


# ---- keys -------------------------------------------------------------------------------


def default_release_key() -> Path:
    """Where ``keygen`` writes the release key and ``push`` reads it without
    ``--key``: ``$EDGEFLOCK_RELEASE_KEY``, else ``~/.config/edgeflock/release.key``."""
    env = os.environ.get("EDGEFLOCK_RELEASE_KEY")
    if env:
        return Path(env)
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "edgeflock" / "release.key"


def cmd_keygen(ctx: _Ctx) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(ctx.args.out) if ctx.args.out else default_release_key()
    pub = out.with_suffix(".pub") if out.suffix == ".key" else Path(str(out) + ".pub")
    for p in (out, pub):
        if p.exists():
            raise CtlError(f"error: {p} exists: not overwriting a release key")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private)
        pub.write_bytes(public)
    except OSError as exc:
        raise CtlError(f"error: cannot write the release key: {exc}") from None
    ctx.out.write(
        f"release key written to {out} (keep it secret: it signs releases)\n"
        f"public key written to {pub} (boards trust it: edgeflash prepare --release-key, "
        "or cloudgateway serve --release-key)\n"
    )
    return 0


# ---- packing ------------------------------------------------------------------------------


def _bundle_identity(root: Path) -> tuple[str, str]:
    try:
        raw = json.loads((root / "manifest.json").read_text())
        version, arch = raw["project"]["version"], raw["arch"]
    except FileNotFoundError:
        raise CtlError(
            f"error: {root} is not a bundle (no manifest.json): run edgeflash bundle"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CtlError(f"error: {root}/manifest.json is unreadable: {exc}") from None
    try:
        check_version(version)
    except UpgradeError as exc:
        raise CtlError(f"error: {root}/manifest.json: {exc}") from None
    if arch not in ARCH_OF_NODE.values():
        raise CtlError(f"error: {root}/manifest.json: arch {arch!r} is not one edgeflock releases")
    return str(version), str(arch)


def _files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                raise CtlError(f"error: {p}: a bundle holds regular files only")
            yield p


def pack_bundle(root: Path, out: IO[bytes]) -> None:
    """``root`` as one deterministic tar (pax) on ``out``: members relative and
    sorted, mtime 0, uid/gid 0, no owner names, modes 0644 or 0755."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(_files(root), key=lambda p: p.relative_to(root).as_posix()):
            info = tarfile.TarInfo(p.relative_to(root).as_posix())
            st = p.stat()
            info.size = st.st_size
            info.mode = 0o755 if st.st_mode & 0o111 else 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with p.open("rb") as f:
                tar.addfile(info, f)


def _manifest_of(f: IO[bytes], version: str, arch: str) -> ReleaseManifest:
    whole = hashlib.sha256()
    pieces: list[str] = []
    size = 0
    f.seek(0)
    while data := f.read(CHUNK_SIZE):
        whole.update(data)
        pieces.append(hashlib.sha256(data).hexdigest())
        size += len(data)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return ReleaseManifest(version, arch, size, whole.hexdigest(), tuple(pieces), created)


# ---- HTTP beyond JSON ---------------------------------------------------------------------


def _raw(ctx: _Ctx, method: str, path: str, data: bytes, ctype: str) -> tuple[int, Any]:
    return ctx.client.send_bytes(method, path, data, ctype)


def _put_piece(ctx: _Ctx, sha: str, index: int, data: bytes) -> None:
    path = f"{RELEASES}/{sha}/pieces/{index}"
    for attempt in range(1, _PIECE_TRIES + 1):
        try:
            code, body = _raw(ctx, "PUT", path, data, "application/octet-stream")
        except CtlError:
            if attempt == _PIECE_TRIES:
                raise
            time.sleep(0.5 * attempt)
            continue
        if code == 200:
            return
        if code in (429, 502, 503, 504) and attempt < _PIECE_TRIES:
            time.sleep(0.5 * attempt)
            continue
        raise CtlError(server_error(code, body))


def cmd_push(ctx: _Ctx) -> int:
    args = ctx.args
    root = Path(args.dir)
    version, arch = _bundle_identity(root)
    key_path = Path(args.key) if args.key else default_release_key()
    if not args.key and not key_path.exists():
        raise CtlError(
            f"error: no release key at {key_path}: make one with `edgectl upgrade keygen` "
            "(boards must trust its release.pub) or give --key FILE"
        )
    try:
        key = key_path.read_bytes()
    except OSError as exc:
        raise CtlError(f"error: cannot read the release key {key_path}: {exc}") from None
    with tempfile.TemporaryFile(prefix="edgeflock-release-") as f:
        pack_bundle(root, f)
        m = _manifest_of(f, version, arch)
        manifest = encode_manifest(m)
        try:
            signature = sign_manifest(key, manifest)
        except UpgradeError as exc:
            raise CtlError(f"error: {key_path}: {exc}") from None
        code, body = ctx.client.request("GET", f"{RELEASES}/{m.sha256}")
        if code == 404:
            code, body = ctx.client.request(
                "POST",
                RELEASES,
                {
                    "manifest": _b64(manifest),
                    "signature": _b64(signature),
                },
            )
            if code not in (200, 201):
                raise CtlError(server_error(code, body))
        elif code != 200:
            raise CtlError(server_error(code, body))
        code, body = ctx.client.request("GET", f"{RELEASES}/{m.sha256}/pieces")
        if code != 200 or not isinstance(body, dict) or not isinstance(body.get("missing"), list):
            raise CtlError(server_error(code, body))
        missing = [i for i in body["missing"] if isinstance(i, int) and 0 <= i < len(m.chunks)]
        sent = 0
        for index in missing:
            start, length = m.chunk_range(index)
            f.seek(start)
            _put_piece(ctx, m.sha256, index, f.read(length))
            sent += length
        ctx.out.write(
            f"release {m.sha256}\n"
            f"  version {version}, arch {arch}, {m.size} bytes in {len(m.chunks)} pieces\n"
            f"  sent {len(missing)} pieces ({sent} bytes); "
            f"{len(m.chunks) - len(missing)} were on the gateway already\n"
        )
    return 0


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


# ---- jobs ---------------------------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"\s*(!?)([A-Za-z0-9_./-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9_.-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*"
)


def label_selector(text: str) -> dict[str, Any]:
    """A label selector string (``a=b,c!=d,e,!f,g in (x,y)``) as a LabelSelector."""
    labels: dict[str, str] = {}
    expressions: list[dict[str, Any]] = []
    parts = re.findall(r"[^,()]+(?:\([^)]*\))?", text)
    if not text.strip() or not parts:
        raise CtlError(f"error: empty label selector {text!r}", 2)
    for part in parts:
        m = _REQUIREMENT.fullmatch(part)
        if m is None:
            raise CtlError(f"error: cannot read {part.strip()!r} of the label selector", 2)
        neg, key, op, value, setop, values = m.groups()
        if neg and (op or setop):
            raise CtlError(f"error: cannot read {part.strip()!r} of the label selector", 2)
        if op in ("=", "=="):
            labels[key] = value
        elif op == "!=":
            expressions.append({"key": key, "operator": "NotIn", "values": [value]})
        elif setop:
            vals = [v.strip() for v in values.split(",") if v.strip()]
            operator = "In" if setop == "in" else "NotIn"
            expressions.append({"key": key, "operator": operator, "values": vals})
        else:
            expressions.append({"key": key, "operator": "DoesNotExist" if neg else "Exists"})
    out: dict[str, Any] = {}
    if labels:
        out["matchLabels"] = labels
    if expressions:
        out["matchExpressions"] = expressions
    return out


def _dns_part(version: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", version.lower()).strip("-") or "v"


def cmd_start(ctx: _Ctx) -> int:
    args = ctx.args
    if bool(args.nodes) == bool(args.selector):
        raise CtlError("error: give exactly one of --nodes A,B or -l SELECTOR", 2)
    spec: dict[str, Any] = {"version": args.version, "concurrency": args.concurrency}
    if args.nodes:
        spec["nodeNames"] = [n.strip() for n in args.nodes.split(",") if n.strip()]
    else:
        spec["labelSelector"] = label_selector(args.selector)
    if args.max_failed is not None:
        spec["failureTolerate"] = args.max_failed
    if args.timeout is not None:
        spec["timeoutSeconds"] = args.timeout
    if args.health_timeout is not None:
        spec["healthTimeoutSeconds"] = args.health_timeout
    meta: dict[str, Any] = (
        {"name": args.name}
        if args.name
        else {"generateName": f"upgrade-{_dns_part(args.version)}-"}
    )
    job = {
        "apiVersion": "operations.kubeedge.io/v1alpha1",
        "kind": "NodeUpgradeJob",
        "metadata": meta,
        "spec": spec,
    }
    code, body = ctx.client.request("POST", JOBS, job)
    if code != 201 or not isinstance(body, dict):
        raise CtlError(server_error(code, body))
    ctx.out.write(f"nodeupgradejob/{body['metadata']['name']} created\n")
    return 0


def _job(ctx: _Ctx, name: str | None) -> dict[str, Any]:
    if name:
        code, body = ctx.client.request("GET", f"{JOBS}/{urllib.parse.quote(name, safe='')}")
        if code != 200 or not isinstance(body, dict):
            raise CtlError(server_error(code, body))
        return body
    code, body = ctx.client.request("GET", JOBS)
    if code != 200 or not isinstance(body, dict):
        raise CtlError(server_error(code, body))
    items = [i for i in body.get("items") or [] if isinstance(i, dict)]
    if not items:
        raise CtlError("error: there is no upgrade job (edgectl upgrade start ...)")

    def order(job: dict[str, Any]) -> tuple[str, int]:
        meta = job.get("metadata") or {}
        return str(meta.get("creationTimestamp") or ""), int(meta.get("resourceVersion") or 0)

    return max(items, key=order)


def _version(node: dict[str, Any] | None) -> str:
    info = ((node or {}).get("status") or {}).get("nodeInfo") or {}
    text = str(info.get("kubeletVersion") or "")
    return text.split(_KUBELET, 1)[1] if _KUBELET in text else (text or "<unknown>")


def _ready(node: dict[str, Any] | None) -> bool:
    for c in ((node or {}).get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def cmd_status(ctx: _Ctx) -> int:
    job = _job(ctx, ctx.args.job)
    name = job["metadata"]["name"]
    spec, status = job.get("spec") or {}, job.get("status") or {}
    entries = [e for e in status.get("nodeStatus") or [] if isinstance(e, dict)]
    code, body = ctx.client.request("GET", "/api/v1/nodes")
    if code != 200 or not isinstance(body, dict):
        raise CtlError(server_error(code, body))
    nodes = {
        (n.get("metadata") or {}).get("name"): n
        for n in body.get("items") or []
        if isinstance(n, dict)
    }
    healthy = sum(1 for e in entries if e.get("state") == "healthy")
    failed = sum(1 for e in entries if e.get("state") in ("failed", "rolledBack"))
    line = (
        f"job {name}: version {spec.get('version')}, {status.get('state') or 'starting'}, "
        f"{healthy}/{len(entries)} healthy, {failed} failed"
        f" (concurrency {spec.get('concurrency', 1)},"
        f" failureTolerate {spec.get('failureTolerate', '0.1')})"
    )
    ctx.out.write(line + (f": {status['reason']}" if status.get("reason") else "") + "\n")
    if not entries:
        return 0
    rows = [["NODE", "STATE", "VERSION", "REASON"]]
    for e in entries:
        node = nodes.get(e.get("nodeName"))
        state = str(e.get("state") or "pending")
        if state == "pending" and not _ready(node):
            state = "offline"
        rows.append(
            [
                str(e.get("nodeName")),
                _STATE_WORDS.get(state, state),
                _version(node) if node is not None else "<none>",
                str(e.get("reason") or ""),
            ]
        )
    _print_table(rows, ctx.out)
    return 0


def cmd_abort(ctx: _Ctx) -> int:
    job = _job(ctx, ctx.args.job)
    name = job["metadata"]["name"]
    path = f"{JOBS}/{urllib.parse.quote(name, safe='')}"
    patch = json.dumps({"spec": {"suspend": True}}).encode()
    code, body = _raw(ctx, "PATCH", path, patch, "application/merge-patch+json")
    if code != 200:
        raise CtlError(server_error(code, body))
    ctx.out.write(
        f"nodeupgradejob/{name} aborted: nothing more is handed out "
        "(boards already upgraded stay; boards not switched yet stop)\n"
    )
    return 0


def cmd_releases(ctx: _Ctx) -> int:
    code, body = ctx.client.request("GET", RELEASES)
    if code != 200 or not isinstance(body, dict):
        raise CtlError(server_error(code, body))
    items = [i for i in body.get("items") or [] if isinstance(i, dict)]
    if not items:
        ctx.err.write("No releases found.\n")
        return 0
    rows = [["VERSION", "ARCH", "SHA256", "SIZE", "STATE"]]
    for i in sorted(items, key=lambda i: (str(i["spec"]["version"]), str(i["spec"]["arch"]))):
        st = i.get("status") or {}
        state = "complete" if st.get("complete") else f"{st.get('piecesMissing')} pieces missing"
        rows.append(
            [
                str(i["spec"]["version"]),
                str(i["spec"]["arch"]),
                str(i["spec"]["sha256"]),
                str(i["spec"]["size"]),
                state,
            ]
        )
    _print_table(rows, ctx.out)
    return 0


# ---- arguments ----------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _tolerance(text: str) -> str:
    from ._upgradeschema import failure_tolerance

    if failure_tolerance(text) is None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a percentage (10%) or a ratio between 0 and 1 (0.1)"
        )
    return text


def register(
    sub: Any,
    commands: MutableMapping[str, Callable[[_Ctx], int]],
    global_flags: Callable[..., None],
) -> None:
    """``edgectl upgrade ...``: parsers on ``sub``; each sets its handler as ``run``."""
    up = sub.add_parser("upgrade", help="upgrade the agent on boards over the air")
    global_flags(up, top=False)
    cmds = up.add_subparsers(dest="upgrade_cmd", required=True, metavar="COMMAND")
    k = cmds.add_parser("keygen", help="make the fleet's release signing key")
    k.add_argument(
        "--out",
        metavar="FILE",
        help="release.key, release.pub beside it (default: $EDGEFLOCK_RELEASE_KEY, "
        "else ~/.config/edgeflock/release.key)",
    )
    k.set_defaults(run=cmd_keygen)
    p = cmds.add_parser("push", help="sign an edgeflash bundle and upload it (resumable)")
    global_flags(p, top=False)
    p.add_argument("dir", metavar="DIR", help="the bundle directory (edgeflash bundle --output)")
    p.add_argument(
        "--key", metavar="FILE", help="the release key (default: where keygen writes it)"
    )
    p.set_defaults(run=cmd_push)
    s = cmds.add_parser("start", help="start an upgrade job")
    global_flags(s, top=False)
    s.add_argument("--version", required=True, metavar="V")
    s.add_argument("--nodes", metavar="A,B", help="the boards, by name")
    s.add_argument("-l", "--selector", metavar="SELECTOR", help="the boards, by label")
    s.add_argument("--concurrency", type=_positive, default=1, metavar="N")
    s.add_argument("--max-failed", type=_tolerance, metavar="10%|0.1", help="default 10%%")
    s.add_argument("--timeout", type=_positive, metavar="S", help="per board (default 3600)")
    s.add_argument(
        "--health-timeout", type=_positive, metavar="S", help="the new agent's trial (default 300)"
    )
    s.add_argument("--name", metavar="NAME", help="the job's name (default: generated)")
    s.set_defaults(run=cmd_start)
    for name, fn, text in (
        ("status", cmd_status, "where each board is in a job"),
        ("abort", cmd_abort, "stop handing a job out"),
    ):
        c = cmds.add_parser(name, help=text)
        global_flags(c, top=False)
        c.add_argument("job", metavar="JOB", nargs="?", help="default: the most recent job")
        c.set_defaults(run=fn)
    r = cmds.add_parser("releases", help="the releases on the gateway")
    global_flags(r, top=False)
    r.set_defaults(run=cmd_releases)
    commands["upgrade"] = cmd_status
