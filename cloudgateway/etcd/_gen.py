"""Regenerate ``_rpc_pb2.py`` from ``_rpc.proto`` (dev time only; needs
grpcio-tools): ``python -m cloudgateway.etcd._gen``, with edgeio.protogen. No
``_pb2_grpc`` module is generated: ``_client.py`` builds its calls from the channel."""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    from edgeio.protogen import generate

    return generate(Path(__file__).resolve().parent / "_rpc.proto", "cloudgateway/etcd/_gen.py")


if __name__ == "__main__":
    sys.exit(main())
