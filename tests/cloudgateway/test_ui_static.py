"""The dashboard's static files at /ui/ on the API port: served without a token
(they hold no data), only by exact name, revalidated by ETag, with a policy
that keeps the page to its own scripts and origin; and carried by the wheel
(pyproject's package-data names every one). The page itself is tested in a
real browser in tests/test_dashboard.py."""

from __future__ import annotations

import fnmatch
import http.client
import tomllib
from pathlib import Path

import trio

from tests.conftest import Gateway

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "cloudgateway" / "ui"


def fetch(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


async def get(
    gw: Gateway, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return await trio.to_thread.run_sync(fetch, gw.ports["api"], path, method, headers)


async def test_ui_files_are_served_without_a_token_by_exact_name(gateway: Gateway) -> None:
    code, headers, _ = await get(gateway, "/ui")
    assert (code, headers["location"]) == (301, "/ui/")

    code, headers, body = await get(gateway, "/ui/")
    assert code == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert body == (UI / "index.html").read_bytes()
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert headers["x-content-type-options"] == "nosniff"

    for name in sorted(p.name for p in UI.iterdir()):
        code, headers, body = await get(gateway, f"/ui/{name}")
        assert code == 200, name
        assert body == (UI / name).read_bytes()
        kind = {"js": "text/javascript", "css": "text/css", "html": "text/html"}[
            name.rsplit(".")[1]
        ]
        assert headers["content-type"].startswith(kind), (name, headers)

    # Unchanged since the client's copy: 304, no body. HEAD: headers only.
    code, headers, _ = await get(gateway, "/ui/app.js")
    code, _, body = await get(gateway, "/ui/app.js", headers={"If-None-Match": headers["etag"]})
    assert (code, body) == (304, b"")
    code, headers, body = await get(gateway, "/ui/app.js", "HEAD")
    assert (code, body) == (200, b"") and int(headers["content-length"]) > 0

    # Nothing but the files of that directory, by their own names.
    for path in ("/ui/nope.js", "/ui/../admin.token", "/ui/%2e%2e/admin.token",
                 "/ui/ui/app.js", "/ui/.hidden", "/ui/App.js", "/ui/app.js/"):  # fmt: skip
        code, _, body = await get(gateway, path)
        assert code == 404, (path, code, body)
    code, _, _ = await get(gateway, "/ui/app.js", "POST")
    assert code == 405
    # The API next to it still wants the token.
    code, _, _ = await get(gateway, "/api/v1/nodes")
    assert code == 401


def test_every_ui_file_is_package_data() -> None:
    """A wheel carries what pyproject's package-data names: each file here must match."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["cloudgateway"]
    files = [p.relative_to(ROOT / "cloudgateway").as_posix() for p in UI.iterdir()]
    assert files
    for f in files:
        assert any(fnmatch.fnmatch(f, g) for g in globs), f"{f} is not in package-data"
