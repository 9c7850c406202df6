"""edged's sans-io parts: back-off, spec helpers, log decoding, status, volumes."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.edged._backoff import Backoff
from edgeagent.edged._logs import LogDecoder
from edgeagent.edged._model import ContainerInfo, PodRuntime, SandboxInfo
from edgeagent.edged._spec import (
    ConfigError,
    container_config,
    container_hash,
    cpu_millis,
    field_values,
    linux_resources,
    memory_bytes,
    pull_policy,
    resolve_env,
    sandbox_config,
)
from edgeagent.edged._status import (
    ContainerView,
    Transitions,
    container_status,
    pod_phase,
    pod_status,
    qos_class,
    runtime_down_status,
)
from edgeagent.edged._volumes import MountError, VolumeMount, prepare_volumes, write_volume_files


def test_backoff_doubles_to_cap_and_resets() -> None:
    b = Backoff(base=10, cap=300, reset_after=600)
    assert b.ready_at("c", 100.0) == 100.0  # first crash: restart at once
    delays = []
    now = 0.0
    for _ in range(8):
        b.restarted("c", now, ran=1)
        delays.append(b.delay("c"))
        now += 1
    assert delays == [10, 20, 40, 80, 160, 300, 300, 300]
    assert b.ready_at("c", 50.0) == 350.0
    b.restarted("c", now, ran=700)  # a long healthy run forgets the back-off
    assert b.delay("c") == 10
    b.forget("c")
    assert b.delay("c") == 0


def test_quantities_and_resources() -> None:
    assert cpu_millis("250m") == 250 and cpu_millis(2) == 2000 and cpu_millis("0.5") == 500
    assert memory_bytes("64Mi") == 64 << 20 and memory_bytes("1G") == 10**9
    with pytest.raises(ConfigError):
        memory_bytes("lots")
    r = linux_resources({"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "32Mi"}})
    assert (r.cpu_shares, r.cpu_quota, r.cpu_period, r.memory_limit_in_bytes) == (
        256,
        50000,
        100000,
        32 << 20,
    )
    assert linux_resources(None).cpu_shares == 2


def test_pull_policy_defaults_like_kubernetes() -> None:
    assert pull_policy({"image": "busybox"}) == "Always"
    assert pull_policy({"image": "busybox:latest"}) == "Always"
    assert pull_policy({"image": "localhost:5000/busybox:1"}) == "IfNotPresent"
    assert pull_policy({"image": "b@sha256:00"}) == "IfNotPresent"
    assert pull_policy({"image": "busybox", "imagePullPolicy": "Never"}) == "Never"


def test_container_hash_ignores_probes() -> None:
    c = {"name": "a", "image": "x", "command": ["sh"]}
    assert container_hash(c) == container_hash({**c, "livenessProbe": {"exec": {}}})
    assert container_hash(c) != container_hash({**c, "command": ["true"]})


def test_env_resolution() -> None:
    objects = {
        "configmaps/ns/cm": {"kind": "ConfigMap", "data": {"A": "1", "B": "2"}},
        "secrets/ns/s": {"kind": "Secret", "type": "Opaque", "data": {"pw": "aHVudGVyMg=="}},
        "secrets/ns/gone": None,
    }
    c = {
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        "env": [
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
            {"name": "MSG", "value": "pw=$(PW) $$(PW) $(NOPE)"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "OPT",
                "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": True}},
            },
        ],
    }
    env = dict(resolve_env(c, objects, "ns", {"metadata.name": "p1"}))
    assert env == {
        "CM_A": "1",
        "CM_B": "2",
        "PW": "hunter2",
        "MSG": "pw=hunter2 $(PW) $(NOPE)",
        "POD": "p1",
    }
    with pytest.raises(ConfigError, match='secret "gone" not found'):
        resolve_env(
            {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]},
            objects,
            "ns",
            {},
        )
    with pytest.raises(ConfigError, match="couldn't find key C"):
        resolve_env(
            {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "C"}}}]},
            objects,
            "ns",
            {},
        )


def cri_line(stream: str, tag: str, text: bytes) -> bytes:
    return (
        b"2026-11-23T09:00:00.123456789Z "
        + stream.encode()
        + b" "
        + tag.encode()
        + b" "
        + text
        + b"\n"
    )


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["stdout", "stderr"]),
            st.binary().filter(lambda b: b"\n" not in b),
            st.booleans(),
        ),
        max_size=20,
    ),
    st.data(),
)
def test_log_decoder_strips_prefixes_at_any_split(
    lines: list[tuple[str, bytes, bool]], data: st.DataObject
) -> None:
    raw = b"".join(cri_line(s, "F" if full else "P", text) for s, text, full in lines)
    expected = b"".join(text + (b"\n" if full else b"") for _, text, full in lines)
    cut = data.draw(st.integers(0, len(raw)))
    d = LogDecoder()
    assert d.feed(raw[:cut]) + d.feed(raw[cut:]) == expected


def info(state: str, exit_code: int = 0, attempt: int = 0) -> ContainerInfo:
    return ContainerInfo(
        id=f"id{attempt}", sandbox_id="s", name="main", attempt=attempt, state=state,
        created_at=1, started_at=2_000_000_000, finished_at=3_000_000_000 if state == "exited" else 0,
        exit_code=exit_code, reason="", message="", image="img", image_ref="sha256:x",
        log_path="/l", hash="h", kind="app", grace=30,
    )  # fmt: skip


def test_container_status_shapes_and_phase() -> None:
    crash = container_status(
        ContainerView(
            "main",
            "img",
            info("exited", 1, 3),
            info("exited", 1, 2),
            ("CrashLoopBackOff", "back-off"),
            False,
            False,
        )
    )
    assert crash["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}
    assert crash["lastState"]["terminated"]["exitCode"] == 1 and crash["restartCount"] == 3
    assert pod_phase([crash], "Always") == "Running"
    done = container_status(
        ContainerView("main", "img", info("exited", 0), None, None, False, False)
    )
    assert done["state"]["terminated"]["reason"] == "Completed"
    assert pod_phase([done], "Never") == "Succeeded"
    failed = container_status(
        ContainerView("main", "img", info("exited", 2), None, None, False, False)
    )
    assert (
        pod_phase([failed], "Never") == "Failed" and pod_phase([failed], "OnFailure") == "Running"
    )
    creating = container_status(ContainerView("main", "img", None, None, None, False, False))
    assert creating["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert pod_phase([creating, done], "Always") == "Pending"


SANDBOX = SandboxInfo("s", "u1", "web", "ns", 0, True, 5_000_000_000, "10.1.0.5")
WEB = {
    "metadata": {"name": "web", "namespace": "ns", "labels": {"app": "web"}},
    "spec": {
        "containers": [
            {"name": "main", "image": "img", "readinessProbe": {"exec": {"command": ["true"]}},
             "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}},
        ],
        "initContainers": [{"name": "setup", "image": "img"}],
    },
}  # fmt: skip


def running(name: str, kind: str, cid: str) -> ContainerInfo:
    return replace(info("running"), id=cid, name=name, kind=kind)


def test_pod_status_follows_init_probes_and_keeps_transition_times() -> None:
    # what edged's pod worker reports, computed without containerd: init not done yet
    transitions = Transitions()
    args = {
        "waiting": {}, "transitions": transitions, "started_at": "T0", "host_ip": "10.0.0.2",
    }  # fmt: skip
    rt = PodRuntime([SANDBOX], [running("setup", "init", "i1")])
    st = pod_status(WEB["spec"], rt, SANDBOX, probes={}, now="T1", **args)  # type: ignore[arg-type]
    assert st["phase"] == "Pending" and st["podIP"] == "10.1.0.5"
    assert st["startTime"] == "1970-01-01T00:00:05Z" and st["qosClass"] == "Guaranteed"
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Initialized"]["reason"] == "ContainersNotInitialized"
    assert st["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    # init done, app running; readiness unknown, then passing: Ready flips, times move
    done = replace(info("exited", 0), id="i1", name="setup", kind="init")
    rt = PodRuntime([SANDBOX], [done, running("main", "app", "a1")])
    st = pod_status(
        WEB["spec"],
        rt,
        SANDBOX,
        probes={("a1", "readiness"): None},
        now="T2",
        **args,  # type: ignore[arg-type]
    )
    conds = {c["type"]: c for c in st["conditions"]}
    assert st["phase"] == "Running" and conds["Ready"]["status"] == "False"
    assert conds["Initialized"]["lastTransitionTime"] == "T2"
    assert conds["PodScheduled"]["lastTransitionTime"] == "T1"
    st = pod_status(
        WEB["spec"],
        rt,
        SANDBOX,
        probes={("a1", "readiness"): True},
        now="T3",
        **args,  # type: ignore[arg-type]
    )
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"] == {"type": "Ready", "status": "True", "lastTransitionTime": "T3"}
    assert conds["Initialized"]["lastTransitionTime"] == "T2"
    assert st["initContainerStatuses"][0]["ready"] is True
    # containerd unreachable: the last status, not ready, reason given
    down = runtime_down_status(st, "dial unix: no such file", transitions, "T4")
    assert down["reason"] == "ContainerRuntimeDown" and "no such file" in down["message"]
    conds = {c["type"]: c for c in down["conditions"]}
    assert conds["Ready"]["lastTransitionTime"] == "T4" and conds["Initialized"]["status"] == "True"
    assert runtime_down_status(None, "x", Transitions(), "T5")["phase"] == "Pending"


def test_pod_status_reasons_for_mount_and_sandbox_errors() -> None:
    args = {
        "probes": {}, "waiting": {}, "transitions": Transitions(), "now": "T", "started_at": "T0",
        "host_ip": "10.0.0.2",
    }  # fmt: skip
    spec = {"containers": [{"name": "main", "image": "img"}], "hostNetwork": True}
    st = pod_status(spec, PodRuntime(), None, mount_error="no volume", **args)  # type: ignore[arg-type]
    assert (st["reason"], st["message"], st["startTime"]) == ("FailedMount", "no volume", "T0")
    assert st["podIP"] == "10.0.0.2"  # host network
    waiting = st["containerStatuses"][0]["state"]["waiting"]
    assert waiting == {"reason": "ContainerCreating", "message": "no volume"}
    st = pod_status(spec, PodRuntime(), None, sandbox_error="cni", runtime_error="x", **args)  # type: ignore[arg-type]
    assert st["reason"] == "FailedCreatePodSandBox" and st["qosClass"] == "BestEffort"


def test_qos_classes() -> None:
    same = {"cpu": "1", "memory": "1Gi"}
    assert qos_class({"containers": [{"resources": {"limits": same, "requests": same}}]}) == (
        "Guaranteed"
    )
    assert qos_class({"containers": [{"resources": {"requests": {"cpu": "1"}}}]}) == "Burstable"
    assert qos_class({"containers": [{}]}) == "BestEffort"


def test_sandbox_and_container_configs() -> None:
    pod = {
        "metadata": {"name": "web", "namespace": "ns", "labels": {"app": "web"}},
        "spec": {
            "hostNetwork": True, "terminationGracePeriodSeconds": 5,
            "securityContext": {"runAsUser": 1000},
            "dnsConfig": {"nameservers": ["1.1.1.1"], "options": [{"name": "ndots", "value": "2"}]},
            "containers": [{
                "name": "main", "image": "img", "command": ["echo", "$(GREETING)", "$$(X)"],
                "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}],
                "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}, "runAsGroup": 7},
                "resources": {"limits": {"cpu": "250m"}},
            }],
        },
    }  # fmt: skip
    sb = sandbox_config(
        pod, uid="u1", owner="node-1", attempt=2, log_directory="/p/logs", cgroup_root="/kubepods/"
    )
    assert sb["metadata"] == {"name": "web", "uid": "u1", "namespace": "ns", "attempt": 2}
    assert sb["hostname"] == "" and sb["linux"]["cgroup_parent"] == "/kubepods/podu1"
    assert sb["port_mappings"] == [
        {"protocol": 1, "container_port": 80, "host_port": 8080, "host_ip": ""}
    ]
    assert sb["linux"]["security_context"]["run_as_user"] == {"value": 1000}
    assert sb["dns_config"]["options"] == ["ndots:2"]
    assert sb["labels"]["app"] == "web" and sb["labels"]["io.edgeflock.node"] == "node-1"
    container = pod["spec"]["containers"][0]  # type: ignore[index]
    fields = field_values(pod, "u1", "10.0.0.2", "10.0.0.2")
    assert fields["metadata.labels['app']"] == "web" and fields["metadata.uid"] == "u1"
    cc = container_config(
        pod, container, kind="app", uid="u1", owner="node-1", attempt=1,
        env=[("GREETING", "hi")], mounts=[VolumeMount("/data", "/host/data", True)],
    )  # fmt: skip
    assert cc["command"] == ["echo", "hi", "$(X)"] and cc["log_path"] == "main/1.log"
    assert cc["envs"] == [{"key": "GREETING", "value": "hi"}]
    assert cc["mounts"] == [
        {"container_path": "/data", "host_path": "/host/data", "readonly": True}
    ]
    assert cc["annotations"] == {"io.kubernetes.pod.terminationGracePeriod": "5"}
    sc = cc["linux"]["security_context"]
    assert sc["capabilities"] == {"add_capabilities": ["NET_ADMIN"], "drop_capabilities": []}
    assert sc["run_as_user"] == {"value": 1000} and sc["run_as_group"] == {"value": 7}
    assert sc["namespace_options"]["network"] == 2  # NODE
    assert cc["linux"]["resources"]["cpu_quota"] == 25_000


def test_atomic_volume_writes_and_updates(tmp_path: Path) -> None:
    vol = tmp_path / "v"
    assert write_volume_files(vol, {"a": b"1", "dir/b": b"2"}, 0o644)
    assert (vol / "a").read_bytes() == b"1" and (vol / "dir" / "b").read_bytes() == b"2"
    assert os.readlink(vol / "a") == "..data/a"
    assert not write_volume_files(vol, {"a": b"1", "dir/b": b"2"}, 0o644)  # unchanged: no swap
    first = os.readlink(vol / "..data")
    assert write_volume_files(vol, {"a": b"3"}, 0o600)
    assert os.readlink(vol / "..data") != first and not (vol / first).exists()
    assert (vol / "a").read_bytes() == b"3" and not (vol / "dir").exists()
    assert (vol / "a").stat().st_mode & 0o777 == 0o600


def test_volumes_missing_objects(tmp_path: Path) -> None:
    pod = {"metadata": {"namespace": "ns"}, "spec": {"volumes": [
        {"name": "c", "configMap": {"name": "cm", "items": [{"key": "k", "path": "sub/f"}]}},
        {"name": "e", "emptyDir": {}},
        {"name": "h", "hostPath": {"path": str(tmp_path / "host"), "type": "DirectoryOrCreate"}},
    ]}}  # fmt: skip
    with pytest.raises(MountError, match='configmap "cm" not found'):
        prepare_volumes(pod, tmp_path / "pod", {"configmaps/ns/cm": None})
    with pytest.raises(MountError, match='key "k" not found'):
        prepare_volumes(pod, tmp_path / "pod", {"configmaps/ns/cm": {"data": {}}})
    paths = prepare_volumes(pod, tmp_path / "pod", {"configmaps/ns/cm": {"data": {"k": "v"}}})
    assert Path(paths["c"], "sub", "f").read_text() == "v"
    assert Path(paths["e"]).is_dir() and Path(paths["h"]).is_dir()


@given(st.binary(max_size=3000), st.lists(st.integers(1, 500), max_size=20))
def test_grpc_reply_reassembles_a_message_split_anywhere(body: bytes, cuts: list[int]) -> None:
    from edgeagent.edged._grpcwire import Reply, frame

    wire = frame(body)
    assert wire[:5] == b"\x00" + len(body).to_bytes(4, "big")
    r = Reply()
    r.headers([(b":status", b"200"), (b"content-type", b"application/grpc")])
    at = 0
    for n in cuts:
        r.data(wire[at : at + n])
        at += n
    r.data(wire[at:])
    r.headers([(b"grpc-status", b"0")])
    assert r.result() == (0, "", body)


def test_grpc_reply_status_and_bad_answers() -> None:
    from edgeagent.edged._grpcwire import Reply, ReplyTooLarge, code_name, request_headers

    assert dict(request_headers("/runtime.v1.RuntimeService/Version", 0.0001)) == {
        b":method": b"POST", b":scheme": b"http", b":authority": b"localhost",
        b":path": b"/runtime.v1.RuntimeService/Version", b"content-type": b"application/grpc",
        b"te": b"trailers", b"grpc-timeout": b"1m",
    }  # fmt: skip

    def reply(*blocks: list[tuple[bytes, bytes]], data: bytes = b"") -> tuple[int, str, bytes]:
        r = Reply()
        if data:
            r.data(data)
        for b in blocks:
            r.headers(b)
        return r.result()

    # trailers-only: status and percent-encoded message in the one header block
    only = [(b":status", b"200"), (b"grpc-status", b"5"), (b"grpc-message", b"not%20found%3A x")]
    assert reply(only) == (5, "not found: x", b"")
    assert code_name(5) == "NOT_FOUND" and code_name(99) == "UNKNOWN"
    assert reply([(b":status", b"502")]) == (2, "no grpc-status (HTTP status 502)", b"")
    assert reply([(b"grpc-status", b"x")])[0] == 2
    assert reply([(b"grpc-status", b"0")], data=b"\x01\x00\x00\x00\x01z")[0] == 13  # compressed
    assert reply([(b"grpc-status", b"0")], data=b"\x00\x00\x00\x00\x09abc") == (
        13, "response message cut short (3 of 9 bytes)", b"",
    )  # fmt: skip
    for code, status in ((7, 14), (11, 14), (8, 1), (2, 1)):  # REFUSED, CALM, CANCEL, INTERNAL
        r = Reply()
        r.stream_reset(code)
        assert r.result() == (status, f"stream reset (HTTP/2 error {code})", b"")
    r = Reply()  # trailers, then a reset that stops the rest of the request
    r.headers([(b":status", b"200"), (b"grpc-status", b"8"), (b"grpc-message", b"too big")])
    r.stream_reset(8)
    assert r.result() == (8, "too big", b"")
    small = Reply(max_message=10)
    small.data(b"\x00" * 15)
    with pytest.raises(ReplyTooLarge):
        small.data(b"\x00")
