"""TLS for the agent's hub connection: pinned CA, node client certificate."""

from __future__ import annotations

import ssl
from pathlib import Path

from ._errors import AgentError

__all__ = ["client_ssl_context"]


def client_ssl_context(data_dir: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # TLS 1.3 only: the gateway requires it, and the hello carries no TLS 1.2 suites
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_verify_locations(str(data_dir / "ca.crt"))
        ctx.load_cert_chain(str(data_dir / "node.crt"), str(data_dir / "node.key"))
    except (OSError, ssl.SSLError) as exc:
        raise AgentError(
            f"node credentials in {data_dir} unusable ({exc}); run edgeagent join"
        ) from exc
    return ctx
