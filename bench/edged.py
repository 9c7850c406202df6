"""edged on a real containerd, and the board's whole stack: apply -> Running latency
against raw CRI calls; the agent as a board runs it (edged on containerd, EventBus
on mosquitto) idle, then with a modbus-mapper following one Modbus TCP device
through it (the board stack: agent + mosquitto + modbus-mapper), then with N pods;
idle CPU; offline reboot -> Running.

.venv/bin/python bench/edged.py [--transport h2|grpcio] [--pods 10] [--latency-pods 10] [--idle 20]

Runs as root (containerd, runc, cgroups); starts its own containerd with
scripts/containerd, mosquitto with scripts/mosquitto and a pymodbus simulator with
scripts/modbus-sim in a temp dir, and stops them at the end. Memory lines come
from bench/procrss.py (VmRSS, and Pss: shared pages split among their sharers),
the script that measures the same processes where they already run (on a board).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import apsw
import cbor2
import trio
from _harness import (
    Gateway,
    cpu_seconds,
    machine,
    mosquitto,
    rss_kib,
    service_env,
    start_agent,
    stop_process,
    wait,
)
from procrss import format_table, usage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeagent._config import AgentConfig
from edgeagent._meta import Meta
from edgeagent.edged import Edged, EdgedOptions
from edgeproto import Apply, Entry, encode_object

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "scripts" / "containerd")
NS = "/api/v1/namespaces/default"
DEVICES = "/apis/devices.kubeedge.io/v1beta1/namespaces/default"
SETTLE = 3.0  # seconds a process is left alone before its memory is read


def image_name() -> str:
    return subprocess.check_output([SCRIPT, "image-name"], text=True).strip()


def pod(name: str, node: str, image: str, uid: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if uid:
        meta["uid"] = uid
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": image, "command": ["sleep", "3600"]}],
        },
    }


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


# ---- apply -> Running, in process: edged vs the same CRI calls made directly
async def latency(
    address: str, data: Path, n: int, image: str, transport: str
) -> tuple[list[float], list[float]]:
    from edgeagent.edged._cri import pb
    from edgeagent.edged._edged import open_cri_client

    node = "bench-latency"
    config = AgentConfig(
        data_dir=data, node=node, hub_url="wss://127.0.0.1:9", cri=address, cri_transport=transport
    )
    meta = Meta(data / "meta.db")
    edged = Edged(config, meta, EdgedOptions(cgroup_root="/edgeflock-bench"))
    rev = 0
    ours: list[float] = []
    raw: list[float] = []

    async def apply(upserts: list[dict[str, Any]], deletes: list[str]) -> None:
        nonlocal rev
        rev += 1
        entries = [
            Entry(f"pods/default/{p['metadata']['name']}", rev, encode_object(p)) for p in upserts
        ]
        await meta.apply(Apply(entries, deletes, rev))

    async def running(name: str) -> None:
        while True:
            gen = meta.outbox_generation
            try:
                st = edged.pod_status("default", name)
            except LookupError:
                st = None
            if st and st.get("phase") == "Running":
                return
            await meta.wait_outbox(gen)

    cri = open_cri_client(address, transport, concurrency=4, timeout=60)

    async def raw_pod(i: int) -> tuple[float, tuple[str, str, str]]:
        """The same work as raw CRI calls: image check, sandbox, create, start."""
        uid = str(uuid.uuid4())
        ns_opts = pb.NamespaceOption(network=0, pid=1, ipc=0)  # as edged sets them
        sconf = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=f"raw{i}", uid=uid, namespace="default"),
            hostname=f"raw{i}",
            log_directory=str(data / "raw" / uid),
            labels={"bench": "raw"},
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=f"/edgeflock-bench/pod{uid}",
                security_context=pb.LinuxSandboxSecurityContext(namespace_options=ns_opts),
            ),
        )
        cconf = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="main"),
            image=pb.ImageSpec(image=image),
            command=["sleep", "3600"],
            log_path="main/0.log",
            linux=pb.LinuxContainerConfig(
                security_context=pb.LinuxContainerSecurityContext(namespace_options=ns_opts)
            ),
        )
        t0 = time.perf_counter()
        st = await cri.call("ImageStatus", pb.ImageStatusRequest(image=pb.ImageSpec(image=image)))
        assert st.image.id
        req = pb.RunPodSandboxRequest(config=sconf)
        sid = (await cri.call("RunPodSandbox", req)).pod_sandbox_id
        req = pb.CreateContainerRequest(pod_sandbox_id=sid, config=cconf, sandbox_config=sconf)
        cid = (await cri.call("CreateContainer", req)).container_id
        await cri.call("StartContainer", pb.StartContainerRequest(container_id=cid))
        return time.perf_counter() - t0, (sid, cid, uid)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(edged.run)
            names = []
            raw_ids = []
            # Interleaved, so that both see the same runtime state (IPAM, snapshots...).
            for i in range(n + 1):  # the first round warms up
                name = f"lat{i}"
                names.append(name)
                t0 = time.perf_counter()
                await apply([pod(name, node, image, str(uuid.uuid4()))], [])
                await running(name)
                dt = time.perf_counter() - t0
                rdt, ids = await raw_pod(i)
                raw_ids.append(ids)
                if i:
                    ours.append(dt)
                    raw.append(rdt)
            await apply([], [f"pods/default/{x}" for x in names])
            for sid, cid, uid in raw_ids:
                await cri.call(
                    "StopContainer", pb.StopContainerRequest(container_id=cid, timeout=0)
                )
                await cri.call("RemoveContainer", pb.RemoveContainerRequest(container_id=cid))
                await cri.call("StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=sid))
                await cri.call("RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
                await trio.to_thread.run_sync(remove_bench_cgroup, uid)
            with trio.fail_after(60):
                while edged.statistics()["pods"]:
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    finally:
        cri.close()
        meta.close()
    return ours, raw


def remove_bench_cgroup(uid: str) -> None:
    for ctl in Path("/sys/fs/cgroup").iterdir():
        p = ctl / "edgeflock-bench" / f"pod{uid}"
        if p.is_dir():
            p.rmdir()


def outbox_running(data: Path) -> int:
    try:
        conn = apsw.Connection(str(data / "meta.db"), flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error:
        return 0
    try:
        rows = conn.execute("SELECT body FROM outbox WHERE key LIKE 'pods/%'").fetchall()
    except apsw.Error:
        return 0
    finally:
        conn.close()
    n = 0
    for (body,) in rows:
        st = cbor2.loads(bytes(body))["status"]  # type: ignore[arg-type]
        if st.get("phase") == "Running" and "reason" not in st:
            n += 1
    return n


def container_ids(ctd: Path) -> set[str]:
    out = subprocess.check_output(
        ["ctr", "--address", f"{ctd}/containerd.sock", "-n", "k8s.io", "containers", "ls", "-q"],
        text=True,
    )
    return set(out.split())


def kill_containerd(ctd: Path) -> None:
    pid = int((ctd / "containerd.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    while Path(f"/proc/{pid}").exists():
        time.sleep(0.01)
    (ctd / "containerd.pid").unlink()


def rmdir_empty_cgroup_roots(names: list[str]) -> None:
    """rmdir (bottom-up) what is left under our cgroup roots; busy cgroups stay."""
    for ctl in Path("/sys/fs/cgroup").iterdir():
        for name in names:
            base = ctl / name
            if not base.is_dir():
                continue
            for d in sorted((p for p in base.rglob("*") if p.is_dir()), reverse=True):
                try:
                    d.rmdir()
                except OSError:
                    pass
            try:
                base.rmdir()
            except OSError:
                pass


def start_modbus_sim() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "modbus-sim"), "--tcp", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "ready" not in line:
        stop_process(proc)
        raise SystemExit(f"modbus-sim did not start: {line!r}")
    return proc, int(line.rsplit("port=", 1)[1])


def sensor_objects(node: str, port: int) -> list[dict[str, Any]]:
    """examples/modbus-sensor.yaml's thermometer, bound to ``node``, on the simulator."""
    import yaml

    docs = list(yaml.safe_load_all((ROOT / "examples" / "modbus-sensor.yaml").read_text()))
    for doc in docs:
        if doc["kind"] == "Device":
            doc["spec"]["nodeName"] = node
            doc["spec"]["protocol"]["configData"]["tcp"] = {"ip": "127.0.0.1", "port": port}
    return docs


def reported(gw: Gateway, name: str) -> dict[str, Any]:
    obj = gw.api("GET", f"{DEVICES}/devices/{name}")
    twins = (obj.get("status") or {}).get("twins") or []
    return {t["propertyName"]: (t.get("reported") or {}).get("value") for t in twins}


def node_ready(gw: Gateway, node: str) -> bool:
    try:
        obj = gw.api("GET", f"/api/v1/nodes/{node}")
    except OSError:
        return False
    conds = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def stack_table(procs: dict[str, int]) -> str:
    return format_table([usage(pid, name) for name, pid in procs.items()])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=10)
    ap.add_argument("--latency-pods", type=int, default=10)
    ap.add_argument("--idle", type=float, default=20.0)
    ap.add_argument(
        "--transport", choices=("h2", "grpcio"), default="h2", help="edged's CRI client"
    )
    args = ap.parse_args()
    print(f"CRI transport: {args.transport}")
    print(f"machine: {machine()}")
    image = image_name()
    had_root = Path("/sys/fs/cgroup/memory/edgeflock").exists()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ctd = root / "containerd"
        subprocess.run([SCRIPT, "start", "--dir", str(ctd)], check=True, capture_output=True)
        address = f"unix://{ctd}/containerd.sock"
        gw: Gateway | None = None
        agent: subprocess.Popen[bytes] | None = None
        sim: subprocess.Popen[str] | None = None
        mapper: subprocess.Popen[bytes] | None = None
        broker_dir = root / "mosquitto"
        services = contextlib.ExitStack()
        try:
            (root / "lat").mkdir()
            ours, raw = trio.run(
                latency, address, root / "lat", args.latency_pods, image, args.transport
            )
            p50o, p50r = statistics.median(ours) * 1000, statistics.median(raw) * 1000
            print(
                f"apply -> Running over {len(ours)} pods (bridge network): edged p50 {p50o:.0f} ms "
                f"p99 {pct(ours, 99) * 1000:.0f} ms; raw CRI p50 {p50r:.0f} ms "
                f"p99 {pct(raw, 99) * 1000:.0f} ms; added at p50 {p50o - p50r:+.0f} ms"
            )

            gw = Gateway(root / "gw")
            gw.start()
            data = root / "agent"
            node = "bench-edged"
            gw.join(node, data)
            (data / "agent.toml").write_text(f'cri_transport = "{args.transport}"\n')
            broker_port = services.enter_context(mosquitto(broker_dir))
            mqtt = f"tcp://127.0.0.1:{broker_port}"
            broker_pid = int((broker_dir / "mosquitto.pid").read_text())

            # The agent as a board runs it, before any pod or device: edged + EventBus.
            agent = start_agent(data, "--cri", address, "--mqtt", mqtt)
            wait(lambda: node_ready(gw, node), 60, "the Node Ready at the gateway")
            time.sleep(SETTLE)
            print(
                f"agent RSS idle (edged + EventBus, 0 pods, connected): {rss_kib(agent.pid) / 1024:.1f} MiB"
            )

            # A modbus-mapper following one device through the agent: the board's stack.
            sim, sim_port = start_modbus_sim()
            for obj in sensor_objects(node, sim_port):
                res = "devicemodels" if obj["kind"] == "DeviceModel" else "devices"
                gw.api("POST", f"{DEVICES}/{res}", obj)
            log = open(root / "mapper.log", "ab")
            mapper = subprocess.Popen(
                [sys.executable, "-m", "mappers.modbus", "--mqtt", mqtt, "--node", node,
                 "--log-level", "WARNING"],
                stdout=log, stderr=log, env=service_env(),
            )  # fmt: skip
            wait(
                lambda: reported(gw, "demo-sensor").get("temperature") is not None,
                60,
                "a temperature from the mapper at the gateway",
            )
            time.sleep(SETTLE)
            stack = {"edgeagent": agent.pid, "mosquitto": broker_pid, "modbus-mapper": mapper.pid}
            print("board stack idle (0 pods, one Modbus TCP device every 1 s):")
            print(stack_table(stack))

            for i in range(args.pods):
                gw.api("POST", f"{NS}/pods", pod(f"p{i:02d}", node, image))
            wait(
                lambda: (
                    sum(
                        1
                        for p in gw.api("GET", f"{NS}/pods")["items"]  # type: ignore[union-attr]
                        if (p.get("status") or {}).get("phase") == "Running"
                    )
                    == args.pods
                ),
                60,
                "pods Running at the gateway",
            )
            time.sleep(SETTLE)
            print(f"agent RSS with {args.pods} running pods: {rss_kib(agent.pid) / 1024:.1f} MiB")
            print(f"board stack with {args.pods} pods:")
            print(stack_table(stack))
            stop_process(mapper)
            mapper = None
            c0, t0 = cpu_seconds(agent.pid), time.monotonic()
            time.sleep(args.idle)
            cpu = (cpu_seconds(agent.pid) - c0) / (time.monotonic() - t0) * 100
            print(
                f"agent CPU with {args.pods} idle pods over {args.idle:.0f} s: {cpu:.2f} % of a core"
            )
            print(f"agent RSS after the idle period: {rss_kib(agent.pid) / 1024:.1f} MiB")

            # Offline reboot: gateway gone, agent and containerd killed (shims survive).
            before = container_ids(ctd)
            gw.stop()
            agent.send_signal(signal.SIGKILL)
            agent.wait()
            kill_containerd(ctd)
            t = time.monotonic()
            subprocess.run([SCRIPT, "start", "--dir", str(ctd)], check=True, capture_output=True)
            t_ctd = time.monotonic() - t
            with apsw.Connection(str(data / "meta.db")) as conn:
                conn.execute("DELETE FROM outbox")  # so only the new statuses count
            t = time.monotonic()
            agent = start_agent(data, "--cri", address, "--mqtt", mqtt)
            wait(lambda: outbox_running(data) == args.pods, 60, "pods Running after restart")
            t_adopt = time.monotonic() - t
            same = container_ids(ctd) == before
            print(
                f"offline restart (agent + containerd killed, containers kept): agent start -> "
                f"{args.pods} pods Running {t_adopt:.2f} s (containerd start {t_ctd:.2f} s); "
                f"containers adopted, none recreated: {same}"
            )

            # Power-cycle-like: every container gone (scripts/containerd stop kills them).
            agent.send_signal(signal.SIGKILL)
            agent.wait()
            subprocess.run([SCRIPT, "stop", "--dir", str(ctd)], check=True, capture_output=True)
            subprocess.run([SCRIPT, "start", "--dir", str(ctd)], check=True, capture_output=True)
            with apsw.Connection(str(data / "meta.db")) as conn:
                conn.execute("DELETE FROM outbox")
            t = time.monotonic()
            agent = start_agent(data, "--cri", address, "--mqtt", mqtt)
            wait(lambda: outbox_running(data) == args.pods, 120, "pods recreated")
            print(
                f"offline cold boot (all containers gone): agent start -> {args.pods} pods "
                f"Running {time.monotonic() - t:.2f} s (recreated)"
            )
        finally:
            if agent is not None and agent.poll() is None:
                agent.send_signal(signal.SIGKILL)
                agent.wait()
            for proc in (mapper, sim):
                if proc is not None:
                    stop_process(proc)
            services.close()
            if gw is not None:
                gw.stop()
            subprocess.run([SCRIPT, "stop", "--dir", str(ctd)], check=False, capture_output=True)
            rmdir_empty_cgroup_roots(["edgeflock-bench"] + ([] if had_root else ["edgeflock"]))


if __name__ == "__main__":
    main()
