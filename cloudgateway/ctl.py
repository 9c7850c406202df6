"""``edgectl``: the admin CLI, shaped like kubectl (apply, get, delete).

Synchronous, standard library plus PyYAML for manifests: it runs on a laptop
with nothing of the gateway loaded. ``main(argv)`` returns the exit status:
0 success, 1 an error (from the server, the network or a manifest), 2 usage.

Kinds come from ``edgeproto.RESOURCES``; a kind added there is usable here at
once, with ``NAME AGE`` columns until it gets an entry in ``TABLES``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

import edgeproto
from edgeproto import Resource

from ._errors import GatewayError
from ._tables import DEFAULT_TABLE, TABLES, Column, Table
from ._tables import get_path as _get
from ._tables import object_name as _name

__all__ = ["TABLES", "CtlError", "Table", "entry", "main", "resolve_kind"]

DEFAULT_SERVER = "http://127.0.0.1:8080"
DEFAULT_GATEWAY_DIR = "/var/lib/edgeflock/gateway"


class CtlError(GatewayError):
    """A failure reported on stderr; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ---- kinds and tables ---------------------------------------------------------------


def resolve_kind(text: str) -> Resource:
    """A resource by plural, singular, short name or Kind (``pods``, ``pod``,
    ``po``, ``Pod``), optionally qualified by group (``devices.devices.kubeedge.io``)."""
    t = text.strip().lower()
    for r in edgeproto.RESOURCES:
        names = {r.name, r.kind.lower(), *r.short_names}
        if r.group:
            names |= {f"{n}.{r.group}" for n in (r.name, r.kind.lower())}
        if t in names:
            return r
    raise CtlError(f'error: the server doesn\'t have a resource type "{text}"')


# ---- HTTP ---------------------------------------------------------------------------


class Client:
    def __init__(
        self,
        server: str,
        token: str | None,
        timeout: float | None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.ssl_context = ssl_context

    def _request(
        self,
        method: str,
        path: str,
        body: Any,
        *,
        data: bytes | None = None,
        content_type: str = "application/json",
    ) -> urllib.request.Request:
        if data is None and body is not None:
            data = json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        return req

    def _unreachable(self, exc: BaseException) -> CtlError:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, TimeoutError):
            return CtlError(f"error: the gateway at {self.server} did not answer in time")
        return CtlError(f"error: cannot reach the gateway at {self.server}: {reason}")

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body); errors answered by the server are
        returned, not raised."""
        return self.send(method, path, self._request(method, path, body))

    def send_bytes(self, method: str, path: str, data: bytes, content_type: str) -> tuple[int, Any]:
        """``request`` with a body that is not JSON (a merge patch, a release
        piece): sent as ``content_type``."""
        req = self._request(method, path, None, data=data, content_type=content_type)
        return self.send(method, path, req)

    def send(self, method: str, path: str, req: urllib.request.Request) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(
                req, timeout=self.timeout or 60, context=self.ssl_context
            ) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise self._unreachable(exc) from None
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            if status >= 400:
                text = raw.decode(errors="replace").strip()
                return status, {"reason": f"HTTP {status}", "message": text[:500]}
            raise CtlError(f"error: the gateway answered {path} with invalid JSON") from None

    def _open_stream(self, req: urllib.request.Request, timeout: float | None) -> Any:
        """The open response of a streamed answer; an error answer raises
        ``CtlError`` with the server's message."""
        try:
            return urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context)
        except urllib.error.HTTPError as exc:
            with exc:
                raw = exc.read()
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = {"message": raw.decode(errors="replace")}
            raise CtlError(server_error(exc.code, answer)) from None
        except (urllib.error.URLError, OSError) as exc:
            raise self._unreachable(exc) from None

    def stream(self, path: str) -> Iterator[dict[str, Any]]:
        """Watch events, one per line, until the server ends the stream."""
        with self._open_stream(self._request("GET", path, None), None) as resp:
            try:
                for line in resp:
                    if line.strip():
                        ev = json.loads(line)
                        if not isinstance(ev, dict):
                            raise ValueError("a watch event must be an object")
                        yield ev
            except ValueError as exc:
                raise CtlError(f"error: malformed watch event from the gateway: {exc}") from None
            except OSError as exc:
                raise CtlError(f"error: the watch stream broke: {exc}") from None

    def read_stream(self, method: str, path: str, body: Any = None) -> Iterator[bytes]:
        """The raw body of a (chunked) answer, piece by piece as it arrives;
        an error answer raises ``CtlError`` with the server's message."""
        with self._open_stream(self._request(method, path, body), self.timeout) as resp:
            try:
                while chunk := resp.read1(65536):
                    yield chunk
            except OSError as exc:
                raise CtlError(f"error: the stream from the gateway broke: {exc}") from None


def server_error(code: int, body: Any) -> str:
    if isinstance(body, dict):
        return f"Error from server ({body.get('reason') or code}): {body.get('message') or body}"
    return f"Error from server ({code}): {body}"


def api_path(r: Resource, namespace: str | None, name: str | None = None) -> str:
    base = f"/apis/{r.group}/{r.version}" if r.group else f"/api/{r.version}"
    if r.namespaced and namespace is not None:
        base += f"/namespaces/{urllib.parse.quote(namespace, safe='')}"
    base += f"/{r.name}"
    if name is not None:
        base += f"/{urllib.parse.quote(name, safe='')}"
    return base


# ---- manifests ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Doc:
    where: str  # 'FILE document N' (and 'item M' inside a List)
    source: str  # the file name, as kubectl quotes it
    body: Any


def _load_documents(path: str, stdin: TextIO) -> list[_Doc]:
    import yaml

    name = "STDIN" if path == "-" else path
    try:
        text = stdin.read() if path == "-" else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CtlError(f"error: cannot read {name}: {exc}") from None
    docs: list[Any] = []
    if text.lstrip().startswith(("{", "[")):
        try:
            docs = [json.loads(text)]
        except ValueError as exc:
            raise CtlError(f"error: {name} document 1: invalid JSON: {exc}") from None
    else:
        loader = yaml.safe_load_all(text)
        while True:
            try:
                doc = next(loader)
            except StopIteration:
                break
            except yaml.YAMLError as exc:
                where = f"{name} document {len(docs) + 1}"
                raise CtlError(f"error: {where}: invalid YAML: {exc}") from None
            docs.append(doc)
    out: list[_Doc] = []
    for i, d in enumerate(docs, 1):
        if d is None:
            continue
        if isinstance(d, dict) and d.get("kind") == "List" and isinstance(d.get("items"), list):
            for j, item in enumerate(d["items"], 1):
                out.append(_Doc(f"{name} document {i} item {j}", name, item))
        else:
            out.append(_Doc(f"{name} document {i}", name, d))
    return out


@dataclass(frozen=True, slots=True)
class _Object:
    resource: Resource
    namespace: str | None
    name: str
    body: dict[str, Any]


def _check_manifest(doc: _Doc, namespace: str | None) -> _Object:
    """The object a document describes, or CtlError naming the document."""
    d = doc.body
    if not isinstance(d, dict):
        raise CtlError(f"error: {doc.where}: not an object (found {type(d).__name__})")
    kind = d.get("kind")
    if not isinstance(kind, str) or not kind:
        raise CtlError(f"error: {doc.where}: 'kind' is required")
    try:
        r = edgeproto.resource_by_kind(kind)
    except edgeproto.ProtocolError:
        raise CtlError(f'error: {doc.where}: no kind "{kind}" is known to edgectl') from None
    api_version = d.get("apiVersion")
    if api_version is not None and api_version != r.api_version:
        raise CtlError(
            f'error: {doc.where}: no kind "{kind}" in version "{api_version}" '
            f"(expected {r.api_version!r})"
        )
    meta = d.get("metadata")
    if not isinstance(meta, dict):
        raise CtlError(f"error: {doc.where}: 'metadata' is required")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise CtlError(f"error: {doc.where}: metadata.name is required")
    ns: str | None = None
    if r.namespaced:
        own = meta.get("namespace")
        if own is not None and not isinstance(own, str):
            raise CtlError(f"error: {doc.where}: metadata.namespace must be a string")
        if own and namespace and own != namespace:
            raise CtlError(
                f'error: {doc.where}: the namespace from the provided object "{own}" does not '
                f"match the namespace \"{namespace}\". You must pass '--namespace={own}' to "
                "perform this operation."
            )
        ns = own or namespace or "default"
        d = {**d, "metadata": {**meta, "namespace": ns}}
    return _Object(r, ns, name, d)


def _comparable(r: Resource, obj: dict[str, Any]) -> dict[str, Any]:
    """What apply compares: top-level content and labels/annotations, with a
    Secret's stringData folded into data as the server does."""
    import base64

    out = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}
    if r.kind == "Secret":
        string_data = out.pop("stringData", None)
        if isinstance(string_data, dict):
            data = dict(out.get("data") or {})
            for k, v in string_data.items():
                data[k] = base64.b64encode(str(v).encode()).decode()
            out["data"] = data
        out.setdefault("type", "Opaque")
    return out


def _unchanged(r: Resource, current: Any, desired: dict[str, Any]) -> bool:
    if not isinstance(current, dict):
        return False
    want = _comparable(r, desired)
    have = _comparable(r, current)
    if any(have.get(k) != v for k, v in want.items()):
        return False
    for section in ("labels", "annotations"):
        w = _get(desired, "metadata", section)
        if w is not None and w != (_get(current, "metadata", section) or {}):
            return False
    return True


# ---- commands -----------------------------------------------------------------------


@dataclass(slots=True)
class _Ctx:
    client: Client
    args: argparse.Namespace
    out: TextIO
    err: TextIO
    stdin: TextIO

    @property
    def namespace(self) -> str | None:
        """The namespace given with -n, if any."""
        ns = getattr(self.args, "namespace", None)
        return str(ns) if ns else None


def _apply_one(ctx: _Ctx, obj: _Object, doc: _Doc) -> str:
    r, ns, name = obj.resource, obj.namespace, obj.name
    label = f"{r.kind.lower()}/{name}"
    code, current = ctx.client.request("GET", api_path(r, ns, name))
    if code == 404:
        code, body = ctx.client.request("POST", api_path(r, ns), obj.body)
        if code == 201:
            return f"{label} created"
        verb = "creating"
    elif code == 200:
        if _unchanged(r, current, obj.body):
            return f"{label} unchanged"
        desired = dict(obj.body)
        rv = _get(current, "metadata", "resourceVersion")
        desired["metadata"] = {**desired["metadata"], "resourceVersion": rv}
        code, body = ctx.client.request("PUT", api_path(r, ns, name), desired)
        if code == 200:
            return f"{label} configured"
        verb = "applying"
    else:
        body, verb = current, "retrieving current configuration of"
    reason, message = (
        (body.get("reason") or code, body.get("message") or body)
        if isinstance(body, dict)
        else (code, body)
    )
    raise CtlError(
        f'Error from server ({reason}): error when {verb} "{doc.source}" '
        f"({doc.where.removeprefix(doc.source + ' ')}): {message}"
    )


def cmd_apply(ctx: _Ctx) -> int:
    failed = 0
    for f in ctx.args.filename:
        try:
            docs = _load_documents(f, ctx.stdin)
        except CtlError as exc:
            ctx.err.write(f"{exc}\n")
            failed += 1
            continue
        for doc in docs:
            try:
                obj = _check_manifest(doc, ctx.namespace)
                ctx.out.write(_apply_one(ctx, obj, doc) + "\n")
            except CtlError as exc:
                if exc.code != 1:
                    raise
                ctx.err.write(f"{exc}\n")
                failed += 1
    return 1 if failed else 0


def _names(kind: str, names: list[str]) -> tuple[str, list[str]]:
    """``KIND NAME...`` or ``KIND/NAME``."""
    if "/" in kind:
        kind, _, first = kind.partition("/")
        if not first or names:
            raise CtlError(
                "error: there is no need to specify a resource type as a separate argument "
                "when passing arguments in resource/name form",
                2,
            )
        names = [first]
    return kind, names


def _rows(objs: list[dict[str, Any]], cols: list[Column], now: float) -> list[list[str]]:
    out = []
    for o in objs:
        row = []
        for _, f in cols:
            try:
                row.append(f(o, now))
            except Exception:  # a malformed object must not stop the listing
                row.append("<error>")
        out.append(row)
    return out


def _columns(r: Resource, args: argparse.Namespace) -> list[Column]:
    table = TABLES.get(r.name, DEFAULT_TABLE)
    cols = list(table.columns) + (list(table.wide) if args.output == "wide" else [])
    if r.namespaced and args.all_namespaces:
        cols.insert(0, ("NAMESPACE", lambda o, _now: str(_get(o, "metadata", "namespace") or "")))
    return cols


def _print_table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _dump(data: Any, fmt: str, out: TextIO) -> None:
    if fmt == "json":
        out.write(json.dumps(data, indent=4) + "\n")
    else:
        import yaml

        out.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _print_objects(
    ctx: _Ctx, r: Resource, objs: list[dict[str, Any]], single: bool, ns: str | None
) -> None:
    fmt = ctx.args.output or ""
    if fmt in ("json", "yaml"):
        data: Any = (
            objs[0]
            if single
            else {"apiVersion": "v1", "kind": "List", "metadata": {}, "items": objs}
        )
        _dump(data, fmt, ctx.out)
        return
    if fmt == "name":
        for o in objs:
            ctx.out.write(f"{r.kind.lower()}/{_name(o, 0)}\n")
        return
    if not objs:
        where = f" in {ns} namespace" if ns is not None else ""
        ctx.err.write(f"No resources found{where}.\n")
        return
    cols = _columns(r, ctx.args)
    _print_table([[h for h, _ in cols], *_rows(objs, cols, time.time())], ctx.out)


def _query(args: argparse.Namespace, **extra: str) -> str:
    params = dict(extra)
    if args.selector:
        params["labelSelector"] = args.selector
    if args.field_selector:
        params["fieldSelector"] = args.field_selector
    return "?" + urllib.parse.urlencode(params) if params else ""


def cmd_get(ctx: _Ctx) -> int:
    args = ctx.args
    kind, names = _names(args.kind, list(args.name))
    r = resolve_kind(kind)
    if names and args.all_namespaces:
        raise CtlError("error: a resource cannot be retrieved by name across all namespaces")
    ns = None if (args.all_namespaces or not r.namespaced) else (ctx.namespace or "default")
    if args.watch:
        return _watch(ctx, r, ns, names)
    if names:
        objs, rc = [], 0
        for name in names:
            code, body = ctx.client.request("GET", api_path(r, ns, name))
            if code == 200 and isinstance(body, dict):
                objs.append(body)
            else:
                ctx.err.write(server_error(code, body) + "\n")
                rc = 1
        if objs:
            _print_objects(ctx, r, objs, len(names) == 1, ns)
        return rc
    code, body = ctx.client.request("GET", api_path(r, ns) + _query(args))
    if code != 200 or not isinstance(body, dict):
        ctx.err.write(server_error(code, body) + "\n")
        return 1
    _print_objects(ctx, r, list(body.get("items") or []), False, ns)
    return 0


def _watch(ctx: _Ctx, r: Resource, ns: str | None, names: list[str]) -> int:
    args = ctx.args
    extra = {"watch": "1"}
    if args.request_timeout:
        extra["timeoutSeconds"] = str(max(1, int(args.request_timeout)))
    if len(names) == 1:
        sel = f"metadata.name={names[0]}"
        args.field_selector = f"{args.field_selector},{sel}" if args.field_selector else sel
    fmt = args.output or ""
    cols = _columns(r, args)
    header = [h for h, _ in cols]
    widths = [len(h) + 3 for h in header]
    if fmt in ("", "wide"):
        ctx.out.write("".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
        ctx.out.write("\n")
    for ev in ctx.client.stream(api_path(r, ns) + _query(args, **extra)):
        obj = ev.get("object")
        if not isinstance(obj, dict):
            continue
        if ev.get("type") == "ERROR":
            ctx.err.write(server_error(int(obj.get("code") or 500), obj) + "\n")
            return 1
        if names and _name(obj, 0) not in names:
            continue
        if fmt in ("json", "yaml"):
            _dump(obj, fmt, ctx.out)
        elif fmt == "name":
            ctx.out.write(f"{r.kind.lower()}/{_name(obj, 0)}\n")
        else:
            row = _rows([obj], cols, time.time())[0]
            cells = [c.ljust(max(w, len(c) + 3)) for c, w in zip(row, widths, strict=True)]
            ctx.out.write("".join(cells).rstrip() + "\n")
        ctx.out.flush()
    return 0


def cmd_delete(ctx: _Ctx) -> int:
    args = ctx.args
    targets: list[tuple[Resource, str | None, str]] = []
    rc = 0
    if args.filename:
        if args.kind:
            raise CtlError("error: give either KIND NAME... or -f FILE, not both", 2)
        for f in args.filename:
            try:
                docs = _load_documents(f, ctx.stdin)
            except CtlError as exc:
                ctx.err.write(f"{exc}\n")
                rc = 1
                continue
            for doc in docs:
                try:
                    obj = _check_manifest(doc, ctx.namespace)
                except CtlError as exc:
                    ctx.err.write(f"{exc}\n")
                    rc = 1
                    continue
                targets.append((obj.resource, obj.namespace, obj.name))
    else:
        if not args.kind:
            raise CtlError("error: delete needs KIND NAME... or -f FILE", 2)
        kind, names = _names(args.kind, list(args.name))
        if not names:
            raise CtlError(f"error: delete {kind} needs at least one NAME", 2)
        r = resolve_kind(kind)
        ns = (ctx.namespace or "default") if r.namespaced else None
        targets = [(r, ns, n) for n in names]
    for r, ns, name in targets:
        code, body = ctx.client.request("DELETE", api_path(r, ns, name))
        if code == 200:
            ctx.out.write(f'{r.kind.lower()} "{name}" deleted\n')
        elif code == 404 and args.ignore_not_found:
            continue
        else:
            ctx.err.write(server_error(code, body) + "\n")
            rc = 1
    return rc


def _write_bytes(stream: TextIO, data: bytes) -> None:
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        buffer.write(data)
        buffer.flush()
    else:
        stream.write(data.decode(errors="replace"))
        stream.flush()


def _pod_path(ctx: _Ctx, pod: str, sub: str, query: list[tuple[str, str]]) -> str:
    base = api_path(resolve_kind("pods"), ctx.namespace or "default", pod)
    qs = urllib.parse.urlencode(query)
    return f"{base}/{sub}" + (f"?{qs}" if qs else "")


def cmd_logs(ctx: _Ctx) -> int:
    args = ctx.args
    query: list[tuple[str, str]] = []
    if args.container:
        query.append(("container", args.container))
    if args.tail is not None and args.tail >= 0:
        query.append(("tailLines", str(args.tail)))
    if args.follow:
        query.append(("follow", "true"))
    for chunk in ctx.client.read_stream("GET", _pod_path(ctx, args.pod, "log", query)):
        _write_bytes(ctx.out, chunk)
    return 0


def _exec_options(args: argparse.Namespace, rest: list[str]) -> list[str]:
    """Options given between POD and ``--`` (kubectl's ``exec POD -c C -- CMD``),
    which argparse leaves in the command; returns the command."""
    takes_value = {"-c": "container", "--container": "container", "--timeout": "timeout"}
    takes_value |= {"-n": "namespace", "--namespace": "namespace"}
    while rest and rest[0] != "--":
        flag, eq, value = rest[0].partition("=")
        dest = takes_value.get(flag)
        if dest is None:
            break  # the command itself, given without --
        rest.pop(0)
        if not eq:
            if not rest:
                raise CtlError(f"error: {flag} needs a value", 2)
            value = rest.pop(0)
        if dest == "timeout":
            try:
                value = int(value)  # type: ignore[assignment]
            except ValueError:
                raise CtlError(
                    f"error: --timeout must be whole seconds, not {value!r}", 2
                ) from None
        setattr(args, dest, value)
    return rest[1:] if rest and rest[0] == "--" else rest


def cmd_exec(ctx: _Ctx) -> int:
    """Runs the command without a terminal; exits with the command's exit code."""
    args = ctx.args
    command = _exec_options(args, list(args.command))
    if not command:
        raise CtlError("error: exec needs a command after --, e.g. edgectl exec POD -- ls /", 2)
    body: dict[str, Any] = {"command": command, "timeoutSeconds": args.timeout}
    if args.container:
        body["container"] = args.container
    code, answer = ctx.client.request("POST", _pod_path(ctx, args.pod, "exec", []), body)
    if code != 200 or not isinstance(answer, dict):
        raise CtlError(server_error(code, answer))
    try:
        out = base64.b64decode(answer.get("stdout") or "")
        err = base64.b64decode(answer.get("stderr") or "")
    except (ValueError, TypeError):
        raise CtlError("error: the gateway sent undecodable exec output") from None
    _write_bytes(ctx.out, out)
    _write_bytes(ctx.err, err)
    if answer.get("truncated"):
        ctx.err.write("edgectl: output was truncated by the gateway\n")
    exit_code = answer.get("exitCode")
    return exit_code if isinstance(exit_code, int) and 0 <= exit_code < 256 else 1


def cmd_revoke(ctx: _Ctx) -> int:
    """``revoke node NAME...``: lock out the nodes' certificates issued so far
    and close their connections (their Node objects stay; a re-join with a new
    token lets a node back in)."""
    args = ctx.args
    if resolve_kind(args.kind).name != "nodes":
        raise CtlError(f"error: only nodes can be revoked, not {args.kind}", 2)
    rc = 0
    for name in args.name:
        path = api_path(resolve_kind("nodes"), None, name) + "/revocation"
        code, body = ctx.client.request("POST", path)
        if code == 200:
            ctx.out.write(f'node "{name}" revoked\n')
        else:
            ctx.err.write(server_error(code, body) + "\n")
            rc = 1
    return rc


COMMANDS: dict[str, Callable[[_Ctx], int]] = {
    "apply": cmd_apply,
    "get": cmd_get,
    "delete": cmd_delete,
    "revoke": cmd_revoke,
    "logs": cmd_logs,
    "exec": cmd_exec,
}


# ---- arguments ----------------------------------------------------------------------


def _global_flags(p: argparse.ArgumentParser, *, top: bool) -> None:
    """Flags accepted before and after the subcommand."""
    kw: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument(
        "--server", "-s", metavar="URL", help="gateway API URL (env EDGECTL_SERVER)", **kw
    )
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--token", metavar="T", help="admin bearer token (env EDGECTL_TOKEN)", **kw)
    tok.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the admin token (env EDGECTL_TOKEN_FILE)",
        **kw,
    )
    p.add_argument("-n", "--namespace", metavar="NS", help="namespace (default: default)", **kw)
    p.add_argument(
        "--certificate-authority",
        metavar="FILE",
        help="CA for an https:// server (default: ca.crt in the gateway's data dir)",
        **kw,
    )
    p.add_argument(
        "--request-timeout",
        metavar="SECONDS",
        type=float,
        help="give up on a request after this long (a watch ends after it)",
        **kw,
    )


def _parser(out: TextIO, err: TextIO) -> argparse.ArgumentParser:
    class Parser(argparse.ArgumentParser):
        def _print_message(self, message: str, file: Any = None) -> None:
            if message:
                (err if file is sys.stderr else out).write(message)

        def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
            if message:
                err.write(message)
            raise _Exit(status)

    p = Parser(prog="edgectl", description="edgeflock admin CLI (kubectl-shaped)")
    _global_flags(p, top=True)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    a = sub.add_parser("apply", help="create or update objects from manifests")
    _global_flags(a, top=False)
    a.add_argument(
        "-f", "--filename", action="append", required=True, help="YAML/JSON file, or - for stdin"
    )
    g = sub.add_parser("get", help="show objects")
    _global_flags(g, top=False)
    g.add_argument("kind", metavar="KIND", help="pods, po, pod, Pod, nodes, no, cm, secrets...")
    g.add_argument("name", metavar="NAME", nargs="*")
    g.add_argument("-o", "--output", choices=("json", "yaml", "wide", "name"))
    g.add_argument("-A", "--all-namespaces", action="store_true")
    g.add_argument("-l", "--selector", metavar="SELECTOR", help="label selector (a=b,c!=d,e)")
    g.add_argument("--field-selector", metavar="SELECTOR", help="e.g. spec.nodeName=pi-01")
    g.add_argument("-w", "--watch", action="store_true", help="follow changes")
    d = sub.add_parser("delete", help="delete objects")
    _global_flags(d, top=False)
    d.add_argument("kind", metavar="KIND", nargs="?")
    d.add_argument("name", metavar="NAME", nargs="*")
    d.add_argument("-f", "--filename", action="append", help="YAML/JSON file, or - for stdin")
    d.add_argument("--ignore-not-found", action="store_true")
    rv = sub.add_parser(
        "revoke", help="lock nodes out: refuse their certificates, close their connections"
    )
    _global_flags(rv, top=False)
    rv.add_argument("kind", metavar="node")
    rv.add_argument("name", metavar="NAME", nargs="+")
    lg = sub.add_parser("logs", help="print a container's logs (through its node)")
    _global_flags(lg, top=False)
    lg.add_argument("pod", metavar="POD")
    lg.add_argument("-c", "--container", metavar="C")
    lg.add_argument("--tail", type=int, default=None, metavar="N", help="last N lines")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    ex = sub.add_parser("exec", help="run a command in a container (no terminal)")
    _global_flags(ex, top=False)
    ex.add_argument("pod", metavar="POD")
    ex.add_argument("-c", "--container", metavar="C")
    ex.add_argument("--timeout", type=int, default=60, metavar="SECONDS")
    ex.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND...")
    from . import _ctl_nodes  # label, annotate, taint, cordon, uncordon

    _ctl_nodes.register(sub, COMMANDS, _global_flags)
    from . import _ctl_top  # top nodes|pods

    _ctl_top.register(sub, COMMANDS, _global_flags)
    from . import _ctl_upgrade  # upgrade keygen|push|start|status|abort|releases

    _ctl_upgrade.register(sub, COMMANDS, _global_flags)
    from ._ctl_rollout import add_parsers as add_rollout_parsers

    add_rollout_parsers(sub)  # rollout, set image, scale (their handlers set ``run``)
    return p


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _read_token_file(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CtlError(f"error: cannot read token file {path}: {exc}") from None
    if not token:
        raise CtlError(f"error: token file {path} is empty")
    return token


def _token(args: argparse.Namespace) -> str | None:
    """--token, --token-file, $EDGECTL_TOKEN, $EDGECTL_TOKEN_FILE, then the gateway's admin.token
    ($EDGEFLOCK_GATEWAY_DIR or /var/lib/edgeflock/gateway) if readable."""
    if getattr(args, "token", None):
        return str(args.token)
    if getattr(args, "token_file", None):
        return _read_token_file(str(args.token_file))
    if os.environ.get("EDGECTL_TOKEN"):
        return os.environ["EDGECTL_TOKEN"].strip()
    if os.environ.get("EDGECTL_TOKEN_FILE"):
        return _read_token_file(os.environ["EDGECTL_TOKEN_FILE"])
    gateway_dir = os.environ.get("EDGEFLOCK_GATEWAY_DIR") or DEFAULT_GATEWAY_DIR
    try:
        return (Path(gateway_dir) / "admin.token").read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _ssl_context(server: str, args: argparse.Namespace) -> ssl.SSLContext | None:
    """For https://: trust --certificate-authority, else the gateway's own CA
    ($EDGEFLOCK_GATEWAY_DIR/ca.crt) when readable, else the system's CAs."""
    if not server.startswith("https://"):
        return None
    ca = getattr(args, "certificate_authority", None)
    if ca is None:
        gateway_dir = os.environ.get("EDGEFLOCK_GATEWAY_DIR") or DEFAULT_GATEWAY_DIR
        own = Path(gateway_dir) / "ca.crt"
        ca = str(own) if own.is_file() else None
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise CtlError(f"error: cannot load the certificate authority {ca}: {exc}") from None


def _server(args: argparse.Namespace) -> str:
    server = getattr(args, "server", None) or os.environ.get("EDGECTL_SERVER") or DEFAULT_SERVER
    parts = urllib.parse.urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CtlError(f"error: --server must be an http:// or https:// URL, not {server!r}", 2)
    return server


def main(
    argv: list[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Run edgectl with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        args = _parser(out, err).parse_args(argv)
    except _Exit as exc:
        return exc.status
    try:
        timeout = getattr(args, "request_timeout", None)
        if timeout is not None and timeout < 0:
            raise CtlError("error: --request-timeout must not be negative", 2)
        server = _server(args)
        client = Client(server, _token(args), timeout or None, _ssl_context(server, args))
        ctx = _Ctx(client, args, out, err, stdin or sys.stdin)
        return (getattr(args, "run", None) or COMMANDS[args.cmd])(ctx)
    except CtlError as exc:
        err.write(f"{exc}\n")
        return exc.code
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
