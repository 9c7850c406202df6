"""Our minimal CRI proto against the real runtime.v1 definitions: the descriptor
embedded (gzipped) in the containerd binary that serves the CRI."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

from google.protobuf import descriptor_pb2

from edgeagent.edged._cri import pb


def runtime_v1_descriptor() -> descriptor_pb2.FileDescriptorProto:
    binary = shutil.which("containerd") or "/usr/bin/containerd"
    data = Path(binary).read_bytes()
    for m in re.finditer(b"\x1f\x8b\x08\x00\x00\x00\x00\x00", data):
        try:
            raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(
                data[m.start() : m.start() + (1 << 21)]
            )
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        except Exception:
            continue
        if fd.package == "runtime.v1" and any(s.name == "RuntimeService" for s in fd.service):
            return fd
    raise AssertionError(f"no runtime.v1 descriptor in {binary}")


def test_every_message_field_and_method_matches_runtime_v1() -> None:
    real = runtime_v1_descriptor()
    ours = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(ours)
    assert ours.package == real.package == "runtime.v1"

    real_msgs = {m.name: m for m in real.message_type}
    checked = 0
    for msg in ours.message_type:
        assert msg.name in real_msgs, msg.name
        real_fields = {f.name: f for f in real_msgs[msg.name].field}
        for f in msg.field:
            rf = real_fields.get(f.name)
            assert rf is not None, f"{msg.name}.{f.name} is not in runtime.v1"
            assert (f.number, f.type, f.label) == (rf.number, rf.type, rf.label), (
                f"{msg.name}.{f.name}"
            )
            assert f.type_name.rsplit(".", 1)[-1] == rf.type_name.rsplit(".", 1)[-1], f.name
            checked += 1
    assert checked > 150

    real_enums = {e.name: {v.name: v.number for v in e.value} for e in real.enum_type}
    for enum in ours.enum_type:
        assert {v.name: v.number for v in enum.value} == real_enums[enum.name]

    real_methods = {
        (s.name, m.name): (m.input_type, m.output_type) for s in real.service for m in s.method
    }
    for s in ours.service:
        for m in s.method:
            assert real_methods[(s.name, m.name)] == (m.input_type, m.output_type)


def test_protobuf_and_grpc_are_imported_only_when_edged_runs() -> None:
    code = (
        "import sys, edgeagent._app, edgeagent._cli, edgeagent.edged;"
        "assert 'google.protobuf' not in sys.modules and 'grpc' not in sys.modules;"
        "from edgeagent.edged._edged import open_cri_client;"
        "c = open_cri_client('unix:///nonexistent.sock', 'h2', concurrency=1, timeout=1);"
        "assert 'google.protobuf' in sys.modules and 'grpc' not in sys.modules;"
        "assert 'h2.connection' in sys.modules;"
        "c = open_cri_client('unix:///nonexistent.sock', 'grpcio', concurrency=1, timeout=1);"
        "assert 'grpc' in sys.modules; c.close()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_each_transport_loads_only_its_own_http2_stack() -> None:
    code = (
        "import sys;"
        "from edgeagent.edged._edged import open_cri_client;"
        "c = open_cri_client('unix:///nonexistent.sock', 'grpcio', concurrency=1, timeout=1);"
        "assert 'grpc' in sys.modules and 'h2' not in sys.modules, 'grpcio loaded h2'; c.close()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
