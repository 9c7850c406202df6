"""``edgectl``: the admin CLI, shaped like kubectl (apply, get, delete).

Synchronous and standard-library only (plus PyYAML for manifests): it runs on
a laptop with nothing of the gateway loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import edgeproto
from edgeproto import Resource

__all__ = ["main"]

DEFAULT_SERVER = "http://127.0.0.1:8080"
DEFAULT_TOKEN_FILES = ("/var/lib/edgeflock/gateway/admin.token",)


class CtlError(Exception):
    """A failure to report on stderr; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ---- kinds and tables -------------------------------------------------------------


def _age(obj: dict[str, Any], now: float) -> str:
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    try:
        t = time.mktime(time.strptime(str(ts), "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except (ValueError, OverflowError):
        return "<unknown>"
    s = max(0, int(now - t))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n * 2 or (unit == "m" and s >= 60):
            return f"{s // n}{unit}"
    return f"{s}s"


def _node_status(o: dict[str, Any]) -> str:
    for c in (o.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return {"True": "Ready", "False": "NotReady"}.get(c.get("status"), "NotReady")
    return "Unknown"


def _pod_ready(o: dict[str, Any]) -> str:
    cs = (o.get("status") or {}).get("containerStatuses") or []
    total = len((o.get("spec") or {}).get("containers") or [])
    return f"{sum(1 for c in cs if c.get('ready'))}/{total}"


def _pod_status(o: dict[str, Any]) -> str:
    st = o.get("status") or {}
    for c in st.get("containerStatuses") or []:
        waiting = (c.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") and st.get("phase") != "Running":
            return str(waiting["reason"])
    return str(st.get("reason") or st.get("phase") or "Pending")


def _address(o: dict[str, Any], kind: str) -> str:
    for a in (o.get("status") or {}).get("addresses") or []:
        if a.get("type") == kind:
            return str(a.get("address"))
    return "<none>"


Column = tuple[str, Callable[[dict[str, Any], float], str]]


@dataclass(frozen=True)
class Table:
    columns: tuple[Column, ...]
    wide: tuple[Column, ...] = ()


def _name(o: dict[str, Any], _: float) -> str:
    return str((o.get("metadata") or {}).get("name", ""))


TABLES: dict[str, Table] = {
    "nodes": Table(
        (
            ("NAME", _name),
            ("STATUS", lambda o, _: _node_status(o)),
            (
                "ROLES",
                lambda o, _: (
                    ",".join(
                        k.split("/", 1)[1]
                        for k in ((o.get("metadata") or {}).get("labels") or {})
                        if k.startswith("node-role.kubernetes.io/")
                    )
                    or "<none>"
                ),
            ),
            ("AGE", _age),
            (
                "VERSION",
                lambda o, _: str(
                    ((o.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", "")
                ),
            ),
        ),
        (
            ("INTERNAL-IP", lambda o, _: _address(o, "InternalIP")),
            (
                "OS-IMAGE",
                lambda o, _: str(
                    ((o.get("status") or {}).get("nodeInfo") or {}).get("osImage", "")
                ),
            ),
            (
                "KERNEL-VERSION",
                lambda o, _: str(
                    ((o.get("status") or {}).get("nodeInfo") or {}).get("kernelVersion", "")
                ),
            ),
            (
                "ARCH",
                lambda o, _: str(
                    ((o.get("status") or {}).get("nodeInfo") or {}).get("architecture", "")
                ),
            ),
        ),
    ),
    "pods": Table(
        (
            ("NAME", _name),
            ("READY", lambda o, _: _pod_ready(o)),
            ("STATUS", lambda o, _: _pod_status(o)),
            (
                "RESTARTS",
                lambda o, _: str(
                    sum(
                        int(c.get("restartCount") or 0)
                        for c in (o.get("status") or {}).get("containerStatuses") or []
                    )
                ),
            ),
            ("AGE", _age),
        ),
        (
            ("IP", lambda o, _: str((o.get("status") or {}).get("podIP") or "<none>")),
            ("NODE", lambda o, _: str((o.get("spec") or {}).get("nodeName") or "<none>")),
        ),
    ),
    "configmaps": Table(
        (
            ("NAME", _name),
            ("DATA", lambda o, _: str(len(o.get("data") or {}) + len(o.get("binaryData") or {}))),
            ("AGE", _age),
        )
    ),
    "secrets": Table(
        (
            ("NAME", _name),
            ("TYPE", lambda o, _: str(o.get("type", "Opaque"))),
            ("DATA", lambda o, _: str(len(o.get("data") or {}))),
            ("AGE", _age),
        )
    ),
}


def resolve_kind(text: str) -> Resource:
    t = text.lower()
    for r in edgeproto.RESOURCES:
        names = {r.name, r.kind.lower(), *r.short_names, r.name.split(".")[0]}
        if t in names:
            return r
    known = ", ".join(r.name for r in edgeproto.RESOURCES)
    raise CtlError(f'error: the server doesn\'t have a resource type "{text}" (known: {known})')


# ---- HTTP -------------------------------------------------------------------------


class Client:
    def __init__(self, server: str, token: str | None) -> None:
        self.server = server.rstrip("/")
        self.token = token

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            with exc:
                raw = exc.read()
            try:
                return exc.code, json.loads(raw or b"null")
            except ValueError:
                return exc.code, {"message": raw.decode(errors="replace"), "reason": "Unknown"}
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CtlError(f"error: cannot reach the gateway at {self.server}: {reason}") from None
        except ValueError as exc:
            raise CtlError(f"error: the gateway answered with invalid JSON: {exc}") from None

    def stream(self, path: str) -> Iterator[dict[str, Any]]:
        req = urllib.request.Request(self.server + path)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req) as resp:
                for line in resp:
                    if line.strip():
                        yield json.loads(line)
        except urllib.error.HTTPError as exc:
            with exc:
                raise CtlError(_server_error(exc.code, json.loads(exc.read() or b"{}"))) from None
        except (urllib.error.URLError, OSError) as exc:
            raise CtlError(f"error: cannot reach the gateway at {self.server}: {exc}") from None


def _server_error(code: int, body: Any) -> str:
    if isinstance(body, dict):
        return f"Error from server ({body.get('reason') or code}): {body.get('message') or body}"
    return f"Error from server ({code}): {body}"


def _path(r: Resource, namespace: str | None, name: str | None = None) -> str:
    base = f"/api/{r.version}" if not r.group else f"/apis/{r.group}/{r.version}"
    if r.namespaced and namespace is not None:
        base += f"/namespaces/{urllib.parse.quote(namespace)}"
    base += f"/{r.name}"
    if name:
        base += f"/{urllib.parse.quote(name)}"
    return base


# ---- commands ---------------------------------------------------------------------


def _load_documents(path: str, stdin: TextIO) -> list[tuple[str, Any]]:
    import yaml

    try:
        text = stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise CtlError(f"error: cannot read {path}: {exc}") from None
    try:
        if path.endswith(".json"):
            docs = [json.loads(text)]
        else:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except (ValueError, yaml.YAMLError) as exc:
        raise CtlError(f"error: {path} is not valid YAML or JSON: {exc}") from None
    out: list[tuple[str, Any]] = []
    for i, d in enumerate(docs, 1):
        if isinstance(d, dict) and d.get("kind") == "List":
            out.extend(
                (f"{path} document {i} item {j}", it)
                for j, it in enumerate(d.get("items") or [], 1)
            )
        else:
            out.append((f"{path} document {i}", d))
    return out


_COMPARED = ("spec", "data", "binaryData", "stringData", "type")


def _same(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    for k in _COMPARED:
        if k in desired and desired[k] != current.get(k):
            return False
    for k in ("labels", "annotations"):
        want = (desired.get("metadata") or {}).get(k)
        if want is not None and want != (current.get("metadata") or {}).get(k):
            return False
    return True


def cmd_apply(
    client: Client, args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO
) -> int:
    failed = 0
    for f in args.filename:
        for where, doc in _load_documents(f, stdin):
            if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
                err.write(f"error: {where}: not a Kubernetes object (no kind)\n")
                failed += 1
                continue
            try:
                r = resolve_kind(doc["kind"])
            except CtlError as exc:
                err.write(f"{where}: {exc}\n")
                failed += 1
                continue
            raw_meta = doc.get("metadata")
            meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
            name = meta.get("name")
            if not isinstance(name, str) or not name:
                err.write(f"error: {where}: metadata.name is required\n")
                failed += 1
                continue
            ns = (meta.get("namespace") or args.namespace or "default") if r.namespaced else None
            if r.namespaced:
                doc = {**doc, "metadata": {**meta, "namespace": ns}}
            code, current = client.request("GET", _path(r, ns, name))
            if code == 404:
                code, body = client.request("POST", _path(r, ns), doc)
                verb = "created"
            elif code == 200:
                if "stringData" not in doc and _same(current, doc):
                    out.write(f"{r.kind.lower()}/{name} unchanged\n")
                    continue
                merged = dict(doc)
                merged["metadata"] = {
                    **meta,
                    "resourceVersion": current["metadata"]["resourceVersion"],
                }
                if r.namespaced:
                    merged["metadata"]["namespace"] = ns
                if "status" in current and "status" not in doc:
                    merged["status"] = current["status"]
                code, body = client.request("PUT", _path(r, ns, name), merged)
                verb = "configured"
            else:
                body = current
            if code in (200, 201):
                out.write(f"{r.kind.lower()}/{name} {verb}\n")
            else:
                err.write(f"{_server_error(code, body)} ({where})\n")
                failed += 1
    return 1 if failed else 0


def _print_objects(
    objs: list[dict[str, Any]], r: Resource, args: argparse.Namespace, out: TextIO, single: bool
) -> None:
    fmt = args.output or ""
    if fmt in ("json", "yaml"):
        data: Any = (
            objs[0]
            if single
            else {"apiVersion": "v1", "kind": "List", "items": objs, "metadata": {}}
        )
        if fmt == "json":
            out.write(json.dumps(data, indent=4) + "\n")
        else:
            import yaml

            out.write(yaml.safe_dump(data, sort_keys=False))
        return
    if fmt == "name":
        for o in objs:
            out.write(f"{r.kind.lower()}/{o['metadata']['name']}\n")
        return
    if not objs:
        where = (
            f" in {args.namespace} namespace" if r.namespaced and not args.all_namespaces else ""
        )
        out.write(f"No resources found{where}.\n")
        return
    table = TABLES.get(r.name, Table((("NAME", _name), ("AGE", _age))))
    cols = list(table.columns) + (list(table.wide) if fmt == "wide" else [])
    if r.namespaced and args.all_namespaces:
        cols.insert(
            0, ("NAMESPACE", lambda o, _: str((o.get("metadata") or {}).get("namespace", "")))
        )
    now = time.time()
    rows = [[h for h, _ in cols]] + [[f(o, now) for _, f in cols] for o in objs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    for row in rows:
        out.write("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def cmd_get(
    client: Client, args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO
) -> int:
    r = resolve_kind(args.kind)
    ns = None if (args.all_namespaces or not r.namespaced) else args.namespace
    if args.watch:
        q = "?watch=1"
        if args.selector:
            q += "&labelSelector=" + urllib.parse.quote(args.selector)
        for ev in client.stream(_path(r, ns) + q):
            obj = ev.get("object") or {}
            if args.name and obj.get("metadata", {}).get("name") not in args.name:
                continue
            out.write(f"{ev.get('type')}\t{r.kind.lower()}/{obj.get('metadata', {}).get('name')}\n")
            out.flush()
        return 0
    if args.name:
        objs = []
        rc = 0
        for name in args.name:
            code, body = client.request("GET", _path(r, ns, name))
            if code == 200:
                objs.append(body)
            else:
                err.write(_server_error(code, body) + "\n")
                rc = 1
        if objs:
            _print_objects(objs, r, args, out, single=len(args.name) == 1)
        return rc
    q = ""
    if args.selector:
        q = "?labelSelector=" + urllib.parse.quote(args.selector)
    code, body = client.request("GET", _path(r, ns) + q)
    if code != 200:
        err.write(_server_error(code, body) + "\n")
        return 1
    _print_objects(list(body.get("items") or []), r, args, out, single=False)
    return 0


def cmd_delete(
    client: Client, args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO
) -> int:
    targets: list[tuple[Resource, str | None, str]] = []
    if args.filename:
        for f in args.filename:
            for where, doc in _load_documents(f, stdin):
                if not isinstance(doc, dict):
                    err.write(f"error: {where}: not an object\n")
                    return 1
                r = resolve_kind(str(doc.get("kind", "")))
                meta = doc.get("metadata") or {}
                targets.append(
                    (
                        r,
                        (meta.get("namespace") or args.namespace) if r.namespaced else None,
                        str(meta.get("name")),
                    )
                )
    else:
        if not args.kind or not args.name:
            raise CtlError("error: delete needs KIND NAME... or -f FILE", 2)
        r = resolve_kind(args.kind)
        targets = [(r, args.namespace if r.namespaced else None, n) for n in args.name]
    rc = 0
    for r, ns, name in targets:
        code, body = client.request("DELETE", _path(r, ns, name))
        if code == 200:
            out.write(f'{r.kind.lower()} "{name}" deleted\n')
        else:
            err.write(_server_error(code, body) + "\n")
            rc = 1
    return rc


def _common(p: argparse.ArgumentParser, top: bool) -> None:
    kw: dict[str, Any] = {"default": argparse.SUPPRESS} if not top else {}
    p.add_argument("--server", "-s", help="gateway API URL (env EDGECTL_SERVER)", **kw)
    p.add_argument("--token", help="admin bearer token (env EDGECTL_TOKEN)", **kw)
    p.add_argument(
        "--token-file", help="file holding the admin token (env EDGECTL_TOKEN_FILE)", **kw
    )
    p.add_argument("-n", "--namespace", help="namespace (default: default)", **kw)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgectl", description="edgeflock admin CLI")
    _common(p, True)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("apply", help="create or update objects from files")
    _common(a, False)
    a.add_argument("-f", "--filename", action="append", required=True, help="FILE, or - for stdin")
    g = sub.add_parser("get", help="show objects")
    _common(g, False)
    g.add_argument("kind")
    g.add_argument("name", nargs="*")
    g.add_argument("-o", "--output", choices=("json", "yaml", "wide", "name"))
    g.add_argument("-A", "--all-namespaces", action="store_true")
    g.add_argument("-l", "--selector")
    g.add_argument("-w", "--watch", action="store_true")
    d = sub.add_parser("delete", help="delete objects")
    _common(d, False)
    d.add_argument("kind", nargs="?")
    d.add_argument("name", nargs="*")
    d.add_argument("-f", "--filename", action="append")
    return p


def _token(args: argparse.Namespace) -> str | None:
    if getattr(args, "token", None):
        return str(args.token)
    path = getattr(args, "token_file", None) or os.environ.get("EDGECTL_TOKEN_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise CtlError(f"error: cannot read token file {path}: {exc}") from None
    if os.environ.get("EDGECTL_TOKEN"):
        return os.environ["EDGECTL_TOKEN"]
    candidates = []
    if os.environ.get("EDGEFLOCK_GATEWAY_DIR"):
        candidates.append(str(Path(os.environ["EDGEFLOCK_GATEWAY_DIR"]) / "admin.token"))
    candidates.extend(DEFAULT_TOKEN_FILES)
    for c in candidates:
        try:
            return Path(c).read_text().strip()
        except OSError:
            continue
    return None


COMMANDS = {"apply": cmd_apply, "get": cmd_get, "delete": cmd_delete}


def main(
    argv: list[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    out, err, inp = stdout or sys.stdout, stderr or sys.stderr, stdin or sys.stdin
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    args.namespace = getattr(args, "namespace", None) or "default"
    server = getattr(args, "server", None) or os.environ.get("EDGECTL_SERVER") or DEFAULT_SERVER
    try:
        client = Client(server, _token(args))
        return COMMANDS[args.cmd](client, args, out, err, inp)
    except CtlError as exc:
        err.write(f"{exc}\n")
        return exc.code
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
