"""edgeio.protomsg: message classes made from a serialized descriptor, through upb
directly (the default) or through protobuf's public route, interchangeable."""

from __future__ import annotations

import importlib
import subprocess
import sys
from typing import Any

import pytest

from edgeagent.edged._cri_api_desc import SERIALIZED
from edgeio import protomsg


def _container(pb: Any) -> Any:
    return pb.Container(
        id="c1",
        pod_sandbox_id="s1",
        metadata={"name": "app", "attempt": 3},
        image=pb.ImageSpec(image="localhost/edgeflock/busybox:1"),
        state=pb.CONTAINER_EXITED,
        created_at=-(1 << 40),  # int64: negative values take ten bytes on the wire
        labels={"io.edgeflock.uid": "u-1", "io.edgeflock.kind": "app"},
        annotations={"grace": "30"},
    )


def test_lean_and_public_classes_read_each_others_bytes() -> None:
    lean = protomsg.messages(SERIALIZED)
    public = protomsg.messages(SERIALIZED, lean=False)
    for a, b in ((lean, public), (public, lean)):
        raw = a.ListContainersResponse(containers=[_container(a), a.Container(id="c2")])
        back = b.ListContainersResponse.FromString(raw.SerializeToString())
        first = back.containers[0]
        assert (first.id, first.metadata.name, first.metadata.attempt) == ("c1", "app", 3)
        assert first.state == 2 == b.CONTAINER_EXITED
        assert first.created_at == -(1 << 40)
        assert dict(first.labels) == {"io.edgeflock.uid": "u-1", "io.edgeflock.kind": "app"}
        assert dict(first.annotations) == {"grace": "30"}
        assert [c.id for c in back.containers] == ["c1", "c2"]
        # (map entries have no order on the wire but the deterministic one)
        assert back.SerializeToString(deterministic=True) == raw.SerializeToString(
            deterministic=True
        )


def test_namespace_is_shaped_like_a_pb2_module() -> None:
    pb = protomsg.messages(SERIALIZED)
    assert pb.DESCRIPTOR.package == "runtime.v1"
    assert pb.DESCRIPTOR.name == "_cri_api.proto"
    # every message of the file, nested map entries as attributes of their parent
    assert {n for n in vars(pb) if n[:1].isupper() and not n.isupper()} >= {
        "RunPodSandboxRequest",
        "ContainerConfig",
        "ListContainerStatsResponse",
    }
    assert pb.PodSandboxConfig.LabelsEntry.DESCRIPTOR.GetOptions().map_entry
    # enum values by name; an unknown field is an error, as with generated modules
    assert (pb.SANDBOX_READY, pb.SANDBOX_NOTREADY, pb.CONTAINER_RUNNING) == (0, 1, 1)
    with pytest.raises(ValueError):
        pb.Container(no_such_field=1)


def test_one_class_per_message_whatever_the_route() -> None:
    # The pool keeps one class per descriptor: edged's classes and any made later
    # for the same file (a _pb2 module, the public route) are the same objects.
    lean = protomsg.messages(SERIALIZED)
    public = protomsg.messages(SERIALIZED, lean=False)
    assert lean.ContainerStatus is public.ContainerStatus


def test_without_upb_the_public_route_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    # A protobuf without the upb module (another backend, or one that moved it) is
    # simulated: the real package always has it here.
    real = importlib.import_module

    def no_upb(name: str, package: str | None = None) -> Any:
        if name == "google._upb._message":
            raise ImportError(name)
        return real(name, package)

    monkeypatch.setattr(protomsg.importlib, "import_module", no_upb)
    assert protomsg._upb() is None
    pb = protomsg.messages(SERIALIZED)
    raw = pb.Container(id="x", labels={"a": "b"}).SerializeToString()
    assert dict(pb.Container.FromString(raw).labels) == {"a": "b"}


def test_edged_messages_leave_protobufs_python_implementation_unloaded() -> None:
    # What the lean route is for: importing edged's CRI messages must not load
    # descriptor_pool and the pure-Python implementation it imports (~1.2 MiB).
    code = (
        "import sys, edgeagent.edged._cri as cri\n"
        "cri.pb.VersionRequest(version='v1').SerializeToString()\n"
        "heavy = [m for m in ('google.protobuf.descriptor_pool',"
        " 'google.protobuf.internal.python_message', 'google.protobuf.text_format',"
        " 'pickle') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
