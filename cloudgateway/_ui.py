"""The web dashboard's static files, served under ``/ui/`` on the API port.

The files (``cloudgateway/ui/``: HTML, CSS, JavaScript modules) are public and
hold no data: the page asks the admin token of whoever opens it and reads
everything through the Kubernetes-shaped API with it, so this route needs no
authorization. Only the files of that one directory are served, by exact name
(no path is ever joined from the request), read once and kept in memory.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from dataclasses import dataclass

from ._http import Request, Response, json_response, status_body

__all__ = ["UI_PATH", "is_ui_path", "ui_response"]

UI_PATH = "/ui/"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
# The page runs only its own scripts and talks only to this origin; data is
# inserted as text, never as markup.
_SECURITY = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
]


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    ctype: str
    etag: str


_files: dict[str, _File] | None = None


def _load() -> dict[str, _File]:
    """Every servable file of the package's ``ui`` directory, by name."""
    global _files
    if _files is None:
        found: dict[str, _File] = {}
        root = importlib.resources.files("cloudgateway").joinpath("ui")
        for entry in root.iterdir():
            name = entry.name
            suffix = name[name.rfind(".") :] if "." in name else ""
            if not entry.is_file() or not _NAME.match(name) or suffix not in _TYPES:
                continue
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            found[name] = _File(body, _TYPES[suffix], etag)
        _files = found
    return _files


def is_ui_path(path: str) -> bool:
    """``path`` (as requested, before any trailing ``/`` is stripped) is the
    dashboard's: ``/ui`` or anything under ``/ui/``."""
    return path == UI_PATH.rstrip("/") or path.startswith(UI_PATH)


def ui_response(req: Request) -> Response:
    """The answer to a request for ``req.path`` under ``/ui``: the file, a
    redirect from ``/ui`` to ``/ui/``, 304 if the client's copy is current,
    404 for a name that is not one of the files, 405 for anything but GET/HEAD."""
    if req.method not in ("GET", "HEAD"):
        return json_response(
            405, status_body(405, "MethodNotAllowed", f"{req.method} is not allowed on {req.path}")
        )
    if req.path == UI_PATH.rstrip("/"):
        return Response(301, headers=[("location", UI_PATH)])
    name = req.path[len(UI_PATH) :] or "index.html"
    found = _load().get(name) if _NAME.match(name) else None
    if found is None:
        return json_response(
            404, status_body(404, "NotFound", f"the dashboard has no file {name!r}")
        )
    headers = [
        ("etag", found.etag),
        # revalidated on each load: a gateway upgrade shows at once, unchanged files cost a 304
        ("cache-control", "no-cache"),
        *_SECURITY,
    ]
    if found.etag in (t.strip() for t in req.headers.get("if-none-match", "").split(",")):
        return Response(304, headers=headers)
    return Response(200, found.body, [("content-type", found.ctype), *headers])
