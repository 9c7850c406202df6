"""edged: the agent's light kubelet, on containerd through direct CRI calls.

``Edged(config, meta).run()`` runs the pods bound to this node; ``read_logs`` and
``exec_sync`` serve logs and exec to the gateway. protobuf and h2 (or grpc, with
``cri_transport = "grpcio"``) are imported only when ``run`` starts
(``edgeagent images import`` and agents without ``cri`` never load them).

Importing the package loads only its exceptions: the sans-io modules (``_status``,
``_spec``, ``_model``, ``_backoff``, ``_grpcwire``, ``_logs``) stay free of trio, and
``Edged`` and the image import are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import CriError, EdgedError, PodNotFound

if TYPE_CHECKING:
    from ._edged import Edged, EdgedOptions
    from ._images import ImageImportError, import_image

__all__ = [
    "CriError",
    "Edged",
    "EdgedError",
    "EdgedOptions",
    "ImageImportError",
    "PodNotFound",
    "import_image",
]

_HOME = {
    "Edged": "._edged",
    "EdgedOptions": "._edged",
    "ImageImportError": "._images",
    "import_image": "._images",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home, __name__), name)
