"""edged's sans-io parts: back-off, spec helpers, log decoding, status, volumes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeagent.edged._backoff import Backoff
from edgeagent.edged._logs import LogDecoder
from edgeagent.edged._model import ContainerInfo
from edgeagent.edged._spec import (
    ConfigError,
    container_hash,
    cpu_millis,
    linux_resources,
    memory_bytes,
    pull_policy,
    resolve_env,
)
from edgeagent.edged._status import ContainerView, container_status, pod_phase
from edgeagent.edged._volumes import MountError, prepare_volumes, write_atomic


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


def test_atomic_volume_writes_and_updates(tmp_path: Path) -> None:
    vol = tmp_path / "v"
    assert write_atomic(vol, {"a": b"1", "dir/b": b"2"}, 0o644)
    assert (vol / "a").read_bytes() == b"1" and (vol / "dir" / "b").read_bytes() == b"2"
    assert os.readlink(vol / "a") == "..data/a"
    assert not write_atomic(vol, {"a": b"1", "dir/b": b"2"}, 0o644)  # unchanged: no swap
    first = os.readlink(vol / "..data")
    assert write_atomic(vol, {"a": b"3"}, 0o600)
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


def test_hpack_rfc7541_vectors_and_roundtrip() -> None:
    from edgeagent.edged._hpack import HpackDecoder, HpackError, encode_headers, huffman_decode

    assert huffman_decode(bytes.fromhex("f1e3c2e5f23a6ba0ab90f4ff")) == b"www.example.com"
    d = HpackDecoder()  # RFC 7541 C.4: requests with Huffman coding, one shared table
    assert d.decode(bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff")) == [
        (":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com"),
    ]  # fmt: skip
    assert d.decode(bytes.fromhex("828684be5886a8eb10649cbf"))[-2:] == [
        (":authority", "www.example.com"), ("cache-control", "no-cache"),
    ]  # fmt: skip
    headers = [
        (":path", "/runtime.v1.RuntimeService/Version"),
        ("grpc-timeout", "1000m"),
        ("x", "y" * 300),
    ]
    assert HpackDecoder().decode(encode_headers(headers)) == headers
    with pytest.raises(HpackError):
        HpackDecoder().decode(b"\xff\xff\xff\xff\xff\xff")
