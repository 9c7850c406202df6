"""``edgectl top nodes|pods``: CPU and memory in use, from the gateway's
``metrics.k8s.io/v1beta1`` API (what boards report), printed as ``kubectl
top`` prints them: CPU in millicores rounded up (``250m``), memory in MiB
(``12Mi``), and for nodes the share of what the Node's ``allocatable`` says.
"""

from __future__ import annotations

import argparse
import math
import urllib.parse
from collections.abc import Callable, MutableMapping
from decimal import Decimal, InvalidOperation
from typing import Any

from .ctl import CtlError, _Ctx, _print_table, server_error

__all__ = ["parse_quantity", "register"]

_API = "/apis/metrics.k8s.io/v1beta1"
_SUFFIXES: dict[str, int | Decimal] = {
    "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip


def parse_quantity(text: Any) -> Decimal | None:
    """A Kubernetes quantity (``250m``, ``2``, ``1234Ki``, ``5n``) in base
    units; None if it is not one."""
    if not isinstance(text, str) or not text or len(text) > 64:
        return None
    for suffix in ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei", text[-1]):
        if text.endswith(suffix) and suffix in _SUFFIXES:
            number, scale = text[: -len(suffix)], Decimal(_SUFFIXES[suffix])
            break
    else:
        number, scale = text, Decimal(1)
    try:
        value = Decimal(number)
    except InvalidOperation:
        return None
    return value * scale if value.is_finite() and value >= 0 else None


def _millicores(q: Any) -> int | None:
    v = parse_quantity(q)
    return None if v is None else math.ceil(v * 1000)


def _bytes(q: Any) -> int | None:
    v = parse_quantity(q)
    return None if v is None else math.ceil(v)


def _cpu_text(q: Any) -> str:
    m = _millicores(q)
    return "<unknown>" if m is None else f"{m}m"


def _memory_text(q: Any) -> str:
    b = _bytes(q)
    return "<unknown>" if b is None else f"{b // (1 << 20)}Mi"


def _share(used: int | None, total: int | None) -> str:
    return f"{used * 100 // total}%" if used is not None and total else "<unknown>"


def _get(ctx: _Ctx, path: str, *, listing: bool = False) -> dict[str, Any]:
    code, body = ctx.client.request("GET", path)
    if code == 404 and listing:  # the API itself is missing
        raise CtlError("error: Metrics API not available")
    if code != 200 or not isinstance(body, dict):
        raise CtlError(server_error(code, body))
    return body


def _query(args: argparse.Namespace) -> str:
    return f"?labelSelector={urllib.parse.quote(args.selector)}" if args.selector else ""


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def cmd_top_nodes(ctx: _Ctx) -> int:
    args = ctx.args
    if args.name:
        items = [_get(ctx, f"{_API}/nodes/{_quote(args.name)}")]
    else:
        items = list(_get(ctx, f"{_API}/nodes{_query(args)}", listing=True).get("items") or [])
    if not items:
        ctx.err.write("error: metrics not available yet\n")
        return 1
    nodes = _get(ctx, "/api/v1/nodes").get("items") or []
    alloc = {
        (n.get("metadata") or {}).get("name"): (n.get("status") or {}).get("allocatable") or {}
        for n in nodes
        if isinstance(n, dict)
    }
    rows = [["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"]]
    for m in sorted(items, key=lambda m: str((m.get("metadata") or {}).get("name"))):
        name = str((m.get("metadata") or {}).get("name", ""))
        usage, a = m.get("usage") or {}, alloc.get(name) or {}
        rows.append(
            [
                name,
                _cpu_text(usage.get("cpu")),
                _share(_millicores(usage.get("cpu")), _millicores(a.get("cpu"))),
                _memory_text(usage.get("memory")),
                _share(_bytes(usage.get("memory")), _bytes(a.get("memory"))),
            ]
        )
    _print_table(rows, ctx.out)
    return 0


def cmd_top_pods(ctx: _Ctx) -> int:
    args = ctx.args
    ns = None if args.all_namespaces else (ctx.namespace or "default")
    if args.name and ns is None:
        raise CtlError("error: a resource cannot be retrieved by name across all namespaces")
    base = f"{_API}/namespaces/{_quote(ns)}/pods" if ns is not None else f"{_API}/pods"
    if args.name:
        items = [_get(ctx, f"{base}/{_quote(args.name)}")]
    else:
        items = list(_get(ctx, base + _query(args), listing=True).get("items") or [])
    if not items:
        where = f" in {ns} namespace" if ns is not None else ""
        ctx.err.write(f"No resources found{where}.\n")
        return 0
    head = ["NAMESPACE"] if ns is None else []
    head += ["POD", "NAME"] if args.containers else ["NAME"]
    rows = [[*head, "CPU(cores)", "MEMORY(bytes)"]]

    def key(m: dict[str, Any]) -> tuple[str, str]:
        meta = m.get("metadata") or {}
        return str(meta.get("namespace", "")), str(meta.get("name", ""))

    for m in sorted(items, key=key):
        namespace, name = key(m)
        lead = [namespace] if ns is None else []
        containers = [c for c in m.get("containers") or [] if isinstance(c, dict)]
        if args.containers:
            for c in containers:
                u = c.get("usage") or {}
                rows.append(
                    [*lead, name, str(c.get("name", "")), _cpu_text(u.get("cpu")),
                     _memory_text(u.get("memory"))]
                )  # fmt: skip
            continue
        cpu = sum(_millicores((c.get("usage") or {}).get("cpu")) or 0 for c in containers)
        mem = sum(_bytes((c.get("usage") or {}).get("memory")) or 0 for c in containers)
        rows.append([*lead, name, f"{cpu}m", f"{mem // (1 << 20)}Mi"])
    _print_table(rows, ctx.out)
    return 0


def register(
    sub: Any,
    commands: MutableMapping[str, Callable[[_Ctx], int]],
    global_flags: Callable[..., None],
) -> None:
    """``edgectl top nodes|pods``: parsers on ``sub``; each sets its handler as ``run``."""
    top = sub.add_parser("top", help="show CPU and memory in use by nodes or pods")
    global_flags(top, top=False)
    kinds = top.add_subparsers(dest="top_kind", required=True, metavar="nodes|pods")
    kinds_fns = ((("nodes", "node", "no"), cmd_top_nodes), (("pods", "pod", "po"), cmd_top_pods))
    for names, fn in kinds_fns:
        p = kinds.add_parser(names[0], aliases=list(names[1:]), help=f"usage of {names[0]}")
        global_flags(p, top=False)
        p.add_argument("name", metavar="NAME", nargs="?")
        p.add_argument("-l", "--selector", metavar="SELECTOR", help="label selector (a=b,c!=d)")
        if fn is cmd_top_pods:
            p.add_argument("-A", "--all-namespaces", action="store_true")
            p.add_argument("--containers", action="store_true", help="one line per container")
        p.set_defaults(run=fn)
    commands["top"] = cmd_top_nodes  # (each subcommand sets ``run``)
