"""Regenerate ``_cri_api_pb2.py`` from ``_cri_api.proto`` (dev time only; needs
grpcio-tools): ``python -m edgeagent.edged._gen``. No ``_pb2_grpc`` module is
generated: ``_cri.py`` builds its unary calls from the channel directly."""

from __future__ import annotations

import sys
from pathlib import Path

from edgeio.protogen import generate


def main() -> int:
    return generate(Path(__file__).resolve().parent / "_cri_api.proto", "edgeagent/edged/_gen.py")


if __name__ == "__main__":
    sys.exit(main())
