"""``cloudgateway``: serve, token create/list, kubeconfig."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import re
import signal
import sys
from pathlib import Path
from typing import Any

from edgeio import add_log_arguments, configure_logging

DEFAULT_DATA_DIR = "/var/lib/edgeflock/gateway"

log = logging.getLogger("cloudgateway")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")


def parse_duration(text: str) -> float:
    m = _DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use 90s, 30m, 1h, 2d)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _add_store(p: argparse.ArgumentParser, default: str | None) -> None:
    from ._backends import check_store_url

    p.add_argument(
        "--store",
        type=check_store_url,
        default=default,
        help="the fleet's store: sqlite (default: the data dir's store.db) or "
        "etcd://HOST:PORT[,HOST:PORT...] (shared by replicas)",
    )
    p.add_argument("--etcd-ca", default=None, help="CA of etcd's members (etcd over TLS)")
    p.add_argument("--etcd-cert", default=None, help="client certificate for etcd")
    p.add_argument("--etcd-key", default=None, help="client key for etcd")


def _store_url(args: argparse.Namespace) -> str | None:
    """``--store`` with the ``--etcd-*`` TLS files folded into its URL."""
    from ._backends import etcd_store_url

    if args.store is None:
        return None
    return etcd_store_url(args.store, ca=args.etcd_ca, cert=args.etcd_cert, key=args.etcd_key)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloudgateway", description="edgeflock cloud gateway")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a TOML file with [gateway], [hub], [api] and [join] sections; flags override it",
    )
    s.add_argument("--data-dir", default=None, help=f"default {DEFAULT_DATA_DIR}")
    _add_store(s, None)  # None: the --config file's, else sqlite
    s.add_argument(
        "--hub", type=parse_hostport, default=None, help="HOST:PORT for agents (wss, mTLS)"
    )
    s.add_argument(
        "--join", type=parse_hostport, default=None, help="HOST:PORT for enrollment (https)"
    )
    s.add_argument(
        "--api",
        type=parse_hostport,
        default=None,
        help="HOST:PORT for the admin API (http, or https with --api-tls)",
    )
    s.add_argument(
        "--api-tls",
        action="store_true",
        default=None,
        help="serve the API over HTTPS with the gateway's certificate (needed by kubectl)",
    )
    s.add_argument("--advertise", default=None, help="host name agents use to reach the hub")
    s.add_argument(
        "--peer",
        type=parse_hostport,
        default=None,
        help="HOST:PORT of the replica-to-replica port (logs/exec relay; shared store only)",
    )
    s.add_argument(
        "--peer-advertise",
        default=None,
        help="host other replicas use to reach this one's peer port (default: --advertise)",
    )
    s.add_argument(
        "--replica-id", default=None, help="this replica's name (default: kept in the data dir)"
    )
    s.add_argument(
        "--san", action="append", default=None, help="extra name/IP for the server certificate"
    )
    s.add_argument(
        "--grace",
        type=parse_duration,
        default=None,
        help="NotReady after this long without heartbeats (default 40s)",
    )
    s.add_argument(
        "--event-ttl",
        type=parse_duration,
        default=None,
        help="Events (edge events from $hw/events/upload/#) are kept this long (default 1h)",
    )
    s.add_argument(
        "--metrics-token-file",
        default=None,
        help="a file with a read-only bearer token for /metrics (the admin token works too)",
    )
    s.add_argument(
        "--release-key",
        default=None,
        metavar="FILE",
        help="the fleet's release public key (PEM): given to joining boards, checked on upload",
    )
    add_log_arguments(s)
    t = sub.add_parser("token", help="join tokens")
    tsub = t.add_subparsers(dest="tcmd", required=True)
    tc = tsub.add_parser("create", help="print a single-use join token for a node")
    tc.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    _add_store(tc, "sqlite")
    tc.add_argument("--node", required=True)
    tc.add_argument("--ttl", type=parse_duration, default=3600.0)
    tl = tsub.add_parser("list", help="list join tokens (without secrets)")
    tl.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    _add_store(tl, "sqlite")
    k = sub.add_parser(
        "kubeconfig", help="print a kubeconfig for kubectl (the API must run with --api-tls)"
    )
    k.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    _add_store(k, "sqlite")
    k.add_argument("--server", default="https://127.0.0.1:8080", help="the API's https:// URL")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ._errors import GatewayError

    try:
        if args.cmd == "serve":
            return _serve(args)
        if args.cmd == "kubeconfig":
            config = kubeconfig(
                Path(args.data_dir), args.server, store_url=_store_url(args) or "sqlite"
            )
            print(json.dumps(config, indent=2))
            return 0
        import functools

        import trio

        from ._join import create_join_token, list_join_tokens

        data_dir = Path(args.data_dir)
        if args.tcmd == "create":
            create = functools.partial(create_join_token, store_url=_store_url(args) or "sqlite")
            print(trio.run(create, data_dir, args.node, args.ttl))
            return 0
        tokens = trio.run(list_join_tokens, data_dir, _store_url(args) or "sqlite")
        print(json.dumps(tokens, indent=2, default=str))
        return 0
    except Exception as exc:  # one line per error, the traceback at DEBUG
        for leaf in _leaves(exc):
            if isinstance(leaf, OSError) and leaf.errno in _LISTEN_ERRNOS and args.cmd == "serve":
                given = (
                    ("hub", args.hub),
                    ("join", args.join),
                    ("api", args.api),
                    ("peer", args.peer),
                )
                listen = ", ".join(f"{w} {a[0]}:{a[1]}" for w, a in given if isinstance(a, tuple))
                print(
                    f"error: cannot listen on one of {listen or 'the addresses'}: {leaf}",
                    file=sys.stderr,
                )
            elif isinstance(leaf, GatewayError | OSError):
                print(f"error: {leaf}", file=sys.stderr)
            else:
                print(f"error: {type(leaf).__name__}: {leaf}", file=sys.stderr)
        log.debug("traceback of the error above", exc_info=exc)
        return 1


_LISTEN_ERRNOS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


def _leaves(exc: BaseException) -> list[BaseException]:
    """The failures inside (nested) exception groups, cancellations left out."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    import trio

    return [] if isinstance(exc, trio.Cancelled) else [exc]


def kubeconfig(data_dir: Path, server: str, *, store_url: str = "sqlite") -> dict[str, Any]:
    """A kubeconfig (JSON is YAML) trusting the gateway's CA, with the admin
    token: from the data dir, or with a shared store, the fleet's from the store."""
    import base64

    from ._backends import store_is_shared
    from ._errors import GatewayError

    if not server.startswith("https://"):
        raise GatewayError(
            f"kubectl sends tokens only over TLS: --server must be https://, not {server}"
        )
    if store_is_shared(store_url):
        import trio

        from ._fleet import read_fleet_credentials

        ca, token = trio.run(read_fleet_credentials, data_dir, store_url)
    else:
        try:
            ca = (data_dir / "ca.crt").read_bytes()
            token = (data_dir / "admin.token").read_text().strip()
        except OSError as exc:
            raise GatewayError(
                f"{data_dir} is not a gateway data dir (start the gateway once): {exc}"
            ) from exc
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "edgeflock",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca).decode(),
                },
            }
        ],
        "users": [{"name": "edgeflock-admin", "user": {"token": token}}],
        "contexts": [
            {"name": "edgeflock", "context": {"cluster": "edgeflock", "user": "edgeflock-admin"}}
        ],
        "current-context": "edgeflock",
    }


def serve_config(args: argparse.Namespace) -> Any:
    """The ``GatewayConfig`` of ``serve``'s arguments: the ``--config`` file,
    then the flags given on top of it."""
    from ._config import load_config

    gateway = {
        "data_dir": args.data_dir,
        "advertise": args.advertise,
        "sans": args.san,
        "grace": args.grace,
        "event_ttl": args.event_ttl,
        "api_tls": args.api_tls,
        "store": _store_url(args),
        "peer_advertise": args.peer_advertise,
        "replica_id": args.replica_id,
        "metrics_token_file": args.metrics_token_file,
        "release_key": args.release_key,
    }
    sections: dict[str, dict[str, Any]] = {
        "gateway": {k: v for k, v in gateway.items() if v is not None}
    }
    for part in ("hub", "join", "api", "peer"):
        address = getattr(args, part)
        if address is not None:
            sections[part] = {"host": address[0], "port": address[1]}
    return load_config(args.config, data_dir=Path(DEFAULT_DATA_DIR), sections=sections)


def _serve(args: argparse.Namespace) -> int:
    import trio

    from ._app import run_gateway

    config = serve_config(args)
    configure_logging(args.log_level, args.log_format)

    async def main_task() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope)
                await run_gateway(config)

    trio.run(main_task)
    return 0


async def _stop_on_signal(signals: Any, scope: Any) -> None:
    async for signum in signals:
        log.info("signal %d: stopping", signum)
        scope.cancel()
        return


if __name__ == "__main__":
    sys.exit(main())
