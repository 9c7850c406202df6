"""edged: the agent's light kubelet, on containerd through direct CRI calls.

``Edged(config, meta).run()`` runs the pods bound to this node; ``read_logs`` and
``exec_sync`` serve logs and exec to the gateway. grpc is imported only when
``run`` starts (``edgeagent images import`` and agents without ``cri`` never load it).
"""

from __future__ import annotations

from ._edged import Edged, EdgedOptions
from ._errors import CriError, EdgedError, PodNotFound
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
