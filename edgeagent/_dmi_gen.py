"""Regenerate ``_dmi_api_pb2.py`` from ``_dmi_api.proto`` (dev time only; needs
grpcio-tools): ``python -m edgeagent._dmi_gen``, with edgeio.protogen. No
``_pb2_grpc`` module is generated: ``_dmi.py`` builds its handlers and calls from
the descriptors."""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    from grpc_tools import protoc  # type: ignore[import-untyped,unused-ignore]

    from edgeio.protogen import generate

    include = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/any.proto
    proto = Path(__file__).resolve().parent / "_dmi_api.proto"
    return generate(proto, "edgeagent/_dmi_gen.py", extra_includes=(include,))


if __name__ == "__main__":
    sys.exit(main())
