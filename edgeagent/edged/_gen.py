"""Regenerate ``_cri_api_desc.py`` from ``_cri_api.proto`` (dev time only; needs
grpcio-tools): ``python -m edgeagent.edged._gen``. Only the file's serialized
descriptor is committed: ``_cri`` makes the message classes from it at import
(``edgeio.protomsg``), and builds its unary calls from the channel directly."""

from __future__ import annotations

import sys
from pathlib import Path

from edgeio.protogen import generate_descriptor


def main() -> int:
    proto = Path(__file__).resolve().parent / "_cri_api.proto"
    return generate_descriptor(proto, "edgeagent/edged/_gen.py")


if __name__ == "__main__":
    sys.exit(main())
