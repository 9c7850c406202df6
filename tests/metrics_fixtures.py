"""Scraping a Prometheus endpoint in tests: parsed with prometheus_client's
own parser, so a malformed exposition fails the test."""

from __future__ import annotations

import socket
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str, token: str | None = None) -> dict[str, Any]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = resp.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], name: str, **labels: str) -> float:
    fam = fams[name.removesuffix("_total").removesuffix("_count")]
    return sum(
        s.value
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )
