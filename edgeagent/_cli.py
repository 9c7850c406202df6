"""``edgeagent``: join, run, status."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = "/var/lib/edgeflock/agent"

log = logging.getLogger("edgeagent")


def _parser() -> argparse.ArgumentParser:
    from edgeio import add_log_arguments

    p = argparse.ArgumentParser(prog="edgeagent", description="edgeflock edge agent")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser(
        "launch",
        help="start the current release's agent and own roll back (edgeagent launch --help)",
        add_help=False,
    )
    j = sub.add_parser("join", help="enroll this board with a gateway")
    j.add_argument("--gateway", required=True, help="https://HOST:JOINPORT")
    j.add_argument("--token", required=True)
    j.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    j.add_argument(
        "--labels",
        default="",
        metavar="K=V,...",
        help="Node labels to ask for (over agent.toml's labels), e.g. site=plant-2,sensor=modbus",
    )
    j.add_argument(
        "--release-key",
        default=None,
        metavar="FILE",
        help="the fleet's release public key (PEM): upgrades must be signed with it "
        "(default: the one the gateway gives at join, if any)",
    )
    r = sub.add_parser("run", help="run the agent")
    r.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    r.add_argument("--cri", default=None, help="unix:///path/containerd.sock")
    r.add_argument(
        "--cri-transport",
        choices=("h2", "grpcio"),
        default=None,
        help="edged's CRI client: h2 (default, lean) or grpcio (agent.toml cri_transport)",
    )
    r.add_argument("--mqtt", default=None, help="tcp://127.0.0.1:1883")
    r.add_argument("--dmi", default=None, help="serve KubeEdge's DMI: unix:///PATH/dmi.sock")
    r.add_argument(
        "--mqtt-auth",
        action="store_true",
        default=None,
        help="write the broker's password and ACL files; mappers log in (mqtt_auth)",
    )
    r.add_argument("--mqtt-auth-dir", default=None, help="where (default DATA_DIR/mqtt)")
    r.add_argument("--heartbeat", type=float, default=None, help="seconds between pings")
    r.add_argument(
        "--metrics",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics on this loopback address (agent.toml: metrics)",
    )
    add_log_arguments(r)
    s = sub.add_parser("status", help="show the agent's state (works when it is stopped)")
    s.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    s.add_argument("-o", "--output", choices=("json", "text"), default="text")
    im = sub.add_parser("images", help="container images on this board")
    im_sub = im.add_subparsers(dest="images_cmd", required=True)
    imp = im_sub.add_parser("import", help="import an OCI or docker archive (offline boards)")
    imp.add_argument("file", help="image archive (.tar)")
    imp.add_argument("--cri", default=None, help="containerd socket (default: the agent's)")
    imp.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    imp.add_argument("--snapshotter", default="overlayfs", help="the one CRI uses")
    return p


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["launch"]:  # the launcher: before anything heavy is imported
        from ._launch import main as launch

        return launch(given[1:])
    args = _parser().parse_args(argv)
    data_dir = Path(args.data_dir)
    if args.cmd == "join":
        return _join(args.gateway, args.token, data_dir, args.labels, args.release_key)
    if args.cmd == "run":
        return _run(args, data_dir)
    if args.cmd == "images":
        return _images_import(args, data_dir)
    return _status(data_dir, args.output)


def _join(
    gateway: str, token: str, data_dir: Path, labels_text: str, release_key: str | None
) -> int:
    from edgeproto.labels import LabelError, parse_labels

    from ._join import JoinFailed, join

    try:
        labels = parse_labels(labels_text)
    except LabelError as exc:
        print(f"error: --labels: {exc}", file=sys.stderr)
        return 2
    key: bytes | None = None
    if release_key is not None:
        try:
            key = Path(release_key).read_bytes()
        except OSError as exc:
            print(
                f"error: --release-key: cannot read {release_key}: {exc.strerror}", file=sys.stderr
            )
            return 2
    try:
        enrollment = join(gateway, token, data_dir, labels=labels, release_key=key)
    except JoinFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"joined as node {enrollment.node}; hub {enrollment.hub_url}")
    if enrollment.release_key:
        print(f"release key: {enrollment.release_key} ({enrollment.release_key_source})")
    else:
        print("release key: none (this board refuses upgrades over the air)")
    if not enrollment.node_created:
        print(
            f"node {enrollment.node} existed: its labels stay as the cloud has them "
            f"(change them with 'edgectl label node {enrollment.node} ...')"
        )
    print(f"next: edgeagent run --data-dir {data_dir}")
    return 0


def _images_import(args: argparse.Namespace, data_dir: Path) -> int:
    from ._errors import AgentError
    from .edged import import_image

    address = args.cri
    if address is None:
        try:
            from ._config import load_config

            address = load_config(data_dir).cri
        except AgentError:
            address = None
    address = address or "unix:///run/containerd/containerd.sock"
    try:
        names = import_image(address, Path(args.file), snapshotter=args.snapshotter)
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name in names:
        print(f"imported {name}")
    return 0


def _run(args: argparse.Namespace, data_dir: Path) -> int:
    import trio

    from edgeio import configure_logging, set_log_fields

    from ._app import run_agent
    from ._config import load_config
    from ._errors import AgentError

    configure_logging(args.log_level, args.log_format)
    try:
        config = load_config(
            data_dir,
            cri=args.cri,
            cri_transport=args.cri_transport,
            mqtt=args.mqtt,
            dmi=args.dmi,
            heartbeat=args.heartbeat,
            mqtt_auth=args.mqtt_auth,
            mqtt_auth_dir=args.mqtt_auth_dir,
            metrics=args.metrics,
        )
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    set_log_fields(node=config.node)  # JSON log lines name the node

    relaunch = False

    async def main_task() -> None:
        nonlocal relaunch
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope)
                relaunch = await run_agent(config)
                nursery.cancel_scope.cancel()

    try:
        trio.run(main_task)
    except Exception as exc:  # start-up errors: one line each, the traceback at DEBUG
        return print_errors(exc)
    if relaunch:  # an upgrade switched versions: the launcher starts the new one
        from . import _slots

        try:
            _slots.relaunch()
        except _slots.SlotError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


def print_errors(exc: BaseException) -> int:
    """Print one ``error: ...`` line per failure inside ``exc`` (exception
    groups flattened); the traceback is logged at DEBUG. Returns the exit code."""
    from ._errors import AgentError

    for leaf in _leaves(exc):
        known = isinstance(leaf, AgentError | OSError)
        print(
            f"error: {leaf}" if known else f"error: {type(leaf).__name__}: {leaf}", file=sys.stderr
        )
    log.debug("traceback of the error above", exc_info=exc)
    return 1


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    import trio

    return [] if isinstance(exc, trio.Cancelled) else [exc]


async def _stop_on_signal(signals: Any, scope: Any) -> None:
    async for signum in signals:
        log.info("signal %d: stopping", signum)
        scope.cancel()
        return


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def agent_status(data_dir: Path) -> dict[str, Any]:
    """The agent's state from its SQLite alone, whether or not it runs."""
    import json as _json

    import apsw

    path = data_dir / "meta.db"
    enrollment: dict[str, Any] = {}
    try:
        enrollment = _json.loads((data_dir / "enrollment.json").read_text())
    except (OSError, ValueError):
        pass
    listed = enrollment.get("hubs")
    enrolled_hubs = [enrollment.get("hub"), *(listed if isinstance(listed, list) else [])]
    enrolled_hubs = list(dict.fromkeys(h for h in enrolled_hubs if isinstance(h, str)))
    nothing_yet: dict[str, Any] = {
        "node": enrollment.get("node"),
        "gateway": enrollment.get("hub"),
        "hubs": enrolled_hubs,
        "running": False,
        "connected": False,
        "last_rev": 0,
        "objects": {},
        "outbox": 0,
        "last_resync": None,
        "release_key": release_key_fingerprint(data_dir),
    }
    if not path.exists():
        return nothing_yet
    conn = _open_for_status(path)
    try:
        if not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'"
        ).fetchall():
            return nothing_yet  # the agent is creating its store right now
        state: dict[str, Any] = {}
        for name, value in conn.execute("SELECT name, value FROM state"):
            try:
                state[name] = _json.loads(value)
            except (TypeError, ValueError):
                state[name] = value
        counts: dict[str, int] = {}
        import edgeproto

        for resource, n in conn.execute("SELECT resource, count(*) FROM objects GROUP BY resource"):
            try:
                counts[edgeproto.resource_by_name(resource).kind] = n
            except edgeproto.ProtocolError:
                counts[resource] = n
        row = conn.execute("SELECT count(*) FROM outbox").fetchone()
        outbox = int(str(row[0])) if row else 0
    except apsw.Error as exc:
        raise SystemExit(f"error: cannot read {path}: {exc}") from exc
    finally:
        conn.close()
    running = _alive(int(state.get("pid") or 0))
    hubs = state.get("hubs")
    return {
        "node": state.get("node") or enrollment.get("node"),
        # the hub connected to now, or last tried
        "gateway": state.get("hub") or enrollment.get("hub"),
        # every gateway replica's hub, as last learnt
        "hubs": hubs if isinstance(hubs, list) and hubs else enrolled_hubs,
        "running": running,
        "connected": bool(state.get("connected")) and running,
        "last_rev": int(state.get("last_rev") or 0),
        "objects": counts,
        "outbox": int(outbox),
        "outbox_dropped": int(state.get("outbox_dropped") or 0),
        "last_resync": state.get("last_resync"),
        "release_key": release_key_fingerprint(data_dir),
    }


def release_key_fingerprint(data_dir: Path) -> str | None:
    from ._releasekey import stored

    return stored(data_dir)


def _open_for_status(path: Path) -> Any:
    """The store opened read-only. A reader beside a running agent must never
    take a write lock, create tables or upgrade the store under it."""
    import apsw

    from ._meta import MetaError, open_meta_read_only

    conn: apsw.Connection | None = None
    try:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        conn.setbusytimeout(1000)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        conn.setbusytimeout(5000)
        return conn
    except apsw.Error:
        if conn is not None:
            conn.close()
    try:  # a full or read-only card: read it the ways the agent itself does then
        return open_meta_read_only(path, busy_timeout_ms=200)
    except MetaError as exc:
        raise SystemExit(f"error: {exc}") from exc


def _status(data_dir: Path, output: str) -> int:
    st = agent_status(data_dir)
    if output == "json":
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0
    print(f"node:       {st['node']}")
    print(f"running:    {st['running']}")
    print(f"connected:  {st['connected']}")
    print(f"gateway:    {st['gateway']}")
    if len(st["hubs"]) > 1:
        print(f"replicas:   {', '.join(st['hubs'])}")
    print(f"last_rev:   {st['last_rev']}")
    objs = ", ".join(f"{k}={v}" for k, v in sorted(st["objects"].items())) or "none"
    print(f"objects:    {objs}")
    print(f"outbox:     {st['outbox']}")
    lr = st.get("last_resync")
    if lr:
        print(f"last sync:  {lr['mode']}, {lr['bytes']} bytes, {lr['seconds']} s")
    print(f"release key: {st['release_key'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
